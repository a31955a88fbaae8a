"""Helpers shared by the test packages (a uniquely named module: several conftest.py exist)."""
from __future__ import annotations

import io
import json
import socket
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import soundfile as sf
import websockets
from aiohttp.abc import AbstractResolver

REPO = Path(__file__).resolve().parents[1]
# The small real-speech protocols inside the repository (tests/data/README.md): the suite
# reads nothing outside it.
PROTOCOLS = REPO / "tests" / "data" / "protocols"


def protocol_file(protocol: str, rel: str) -> Path:
    """A file of an in-repo protocol; a missing one fails the test (never a skip)."""
    path = PROTOCOLS / protocol / rel
    if not path.is_file():
        raise FileNotFoundError(f"test data missing: {path} (tests/data/README.md lists what is kept; "
                                f"add it to scripts/make_test_data.py)")
    return path


def protocol_audio(protocol: str, name: str) -> Path:
    """The WAV of enrol model or test `name` (e.g. "1688_enrol0") of an in-repo protocol."""
    return protocol_file(protocol, f"audio/{name}.wav")


def read_mulaw_bytes(path: Path) -> bytes:
    """The raw G.711 mu-law payload of a protocol WAV (format tag 7), as a telephony peer sends it."""
    import audioop_compat  # noqa: F401  (see tests/audioop_compat.py)
    data, rate = sf.read(path, dtype="int16")
    assert rate == 8000
    return audioop_compat.lin2ulaw(data)


async def admin(settings, *argv: str) -> str:
    from gateway.cli.main import _admin, build_parser
    args = build_parser(include_bench=False).parse_args(["admin", "--data-dir", str(settings.data_dir), *argv])
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = await _admin(args)
    assert rc == 0, buf.getvalue()
    return buf.getvalue()


def pat_of(output: str) -> str:
    last = output.strip().splitlines()[-1]
    assert last.startswith("pat="), output
    return last[4:]


@dataclass
class Gateway:
    url: str
    ws_url: str
    http: aiohttp.ClientSession
    settings: object
    pat: str
    app: object = None     # the aiohttp app (tests that publish on its results bus)

    async def token(self, master_id: str, profile: str = "retail", tenant: str = "acme", pat: str | None = None,
                    custom: dict | None = None) -> str:
        r = await self.http.post(f"{self.url}/api/token/", headers={"Authorization": f"Bearer {pat or self.pat}"},
                                 json={"agentId": "a1", "agentSkill": "s", "masterId": master_id, "tenantId": tenant,
                                       "vbProfile": profile, "ccaasProvider": "GENESYS",
                                       "customProperties": custom or {"Ani": "5551234"}})
        body = await r.json()
        assert r.status == 200, body
        return body["data"]["token"]

    async def call(self, method: str, path: str, token: str | None = None, **kw):
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        r = await self.http.request(method, f"{self.url}{path}", headers=headers, **kw)
        try:
            body = await r.json(content_type=None)
        except json.JSONDecodeError:
            body = await r.text()
        return r.status, body

    async def ondemand(self, token: str, users: str) -> dict:
        """GET /verification/ondemand, which must answer 200: the best of `users`."""
        status, body = await self.call("GET", "/verification/ondemand", params={"users": users, "token": token})
        assert status == 200, body
        return body

    async def enrol(self, user_id: str, payload: bytes, profile: str = "retail", pat: str | None = None) -> None:
        """Enrol `user_id` in `profile` from mu-law speech streamed on a call of its own."""
        master = f"enrol-{user_id}-{profile}"
        tok = await self.token(master, profile=profile, pat=pat)
        await self.stream(tok, master, payload)
        status, body = await self.call("POST", "/enrol", tok, json={"user_id": user_id})
        assert status == 200, body

    async def stream(self, token: str, dialog_id: str, payload: bytes, encoding: str = "mulaw",
                     sample_rate: int = 8000, frame_bytes: int = 1600) -> list:
        """Stream like a real client: config, 200 ms frames, empty message; returns server messages."""
        received = []
        async with websockets.connect(f"{self.ws_url}/agent-vb-mw/stream?token={token}") as ws:
            await ws.send(json.dumps({"encoding": encoding, "sample_rate": sample_rate, "dialog_id": dialog_id}))
            received.append(json.loads(await ws.recv()))
            for i in range(0, len(payload), frame_bytes):
                await ws.send(payload[i:i + frame_bytes])
            await ws.send(b"")
            async for msg in ws:
                received.append(json.loads(msg))
        return received


def gateway_settings(tmp_path: Path, **sections: dict):
    """The test gateway's settings: its own data dir under `tmp_path`, events in a file there,
    closed dialogs kept; `sections` add to them (e.g. nice={"resume_idle_s": 3})."""
    from gateway.infra.config import load_settings
    overrides: dict = {
        "server": {"data_dir": str(tmp_path / "var"), "port": 0, "shutdown_grace_s": 1},
        "events": {"jsonl_path": str(tmp_path / "var" / "events.jsonl")},
        "dialogs": {"retain_after_close_s": 600},
    }
    return load_settings(environ={}, overrides={**overrides, **sections})


def dialog_named(core, dialog_id: str):
    """The one dialog on masterId `dialog_id` (tests with a single owner per call)."""
    found = [d for d in core.dialogs.all() if d.dialog_id == dialog_id]
    assert len(found) == 1, f"{len(found)} dialogs on {dialog_id!r}"
    return found[0]


def readonly_mount(path: Path) -> list[str]:
    """An argv prefix that runs a command with `path` bind-mounted read-only (EROFS, as a
    container image's files or a read-only volume are, whoever the user), in an unprivileged
    user and mount namespace (util-linux unshare). Fails the test, in CI, where that is not
    possible; skips elsewhere."""
    import os
    import shutil
    import subprocess

    import pytest
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"],
                                  capture_output=True).returncode == 0:
        return [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
                'mount --bind -o ro "$0" "$0" && exec "$@"', str(path)]
    msg = "no unprivileged user namespaces here (unshare --user --mount): cannot make a read-only mount"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


async def serve_process(data_dir: Path, **env: str):
    """`vbgw serve` in a subprocess with a bootstrapped PAT, once it is ready:
    (process, port, pat, base URL). stderr is a pipe: read it after the process ended."""
    import asyncio
    import os
    import subprocess
    import sys

    from tools.bench.stream import _free_port
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "admin", "--data-dir", str(data_dir), "bootstrap",
                          "--tenant", "acme", "--profile", "retail"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    pat = out.strip().splitlines()[-1].removeprefix("pat=")
    port = _free_port()
    env = dict(os.environ, VBGW_EVENTS__JSONL_PATH=str(data_dir / "events.jsonl"), **env)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--data-dir",
                             str(data_dir)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    return proc, port, pat, base


class MapResolver(AbstractResolver):
    """An aiohttp resolver for tests of URL fetching: name -> address(es), counting lookups;
    unknown names fail like a DNS miss (the machine's /etc/hosts is not ours to change)."""

    def __init__(self, names: dict[str, str | list[str]]):
        self.names = names
        self.calls: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.calls.append(host)
        addrs = self.names.get(host)
        if addrs is None:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        addrs = [addrs] if isinstance(addrs, str) else addrs
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a in addrs]

    async def close(self):
        pass


def add_hostile_downloads(app, hits: list[str], big: str, slow: str) -> None:
    """Routes of a test download server that a safe fetcher must give up on: `big` streams
    64 MB chunked (no Content-Length to refuse early; "aborted" lands in `hits` when the client
    hangs up), `slow` sends 4 bytes then stalls for a minute."""
    import asyncio

    from aiohttp import web

    async def big_streamed(request):
        hits.append(request.path)
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(1000):
                await resp.write(b"\0" * 65536)
        except (ConnectionResetError, asyncio.CancelledError):
            hits.append("aborted")
            raise
        return resp

    async def stalled(request):
        hits.append(request.path)
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"RIFF")
        await asyncio.sleep(60)
        return resp

    app.router.add_get(big, big_streamed)
    app.router.add_get(slow, stalled)
