"""`vbgw bench stream --sessions N`: N concurrent direct streams paced in real time, each
with push verification on (GET /verification SSE) against an enrolled user, against a
gateway started in a subprocess. Reports whether the engine backlog grew, and the p95
delay from the moment enough speech had arrived to the NORMAL result (measured inside the
gateway: arrival time of the audio that completed the speech threshold -> result).

With `--uploads K` / `--aculab-verifies M`, K batch enrolments and M Aculab verifies are sent
back to back for the whole run: the live calls' NORMAL p95 must stay under 1 s while
uploaded files are analysed (issue #12; docs/benchmarks.md)."""
from __future__ import annotations

import argparse
import collections
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import numpy as np
import soundfile as sf
import websockets

from tools.protocol import read_audio

REPO = Path(__file__).resolve().parents[2]
# The calls' speech: the small in-repo cut of ls-other-tel unless --protocol names another
# (docs/benchmarks.md, "Data").
DEFAULT_PROTOCOL = REPO / "tests" / "data" / "protocols" / "ls-other-tel"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=100, help="concurrent streams (the largest to try with --sweep)")
    p.add_argument("--sweep", action="store_true", help="try 25%%, 50%%, 75%%, 100%% of --sessions and report the "
                                                       "largest without backlog growth")
    p.add_argument("--seconds", type=float, default=40.0, help="audio seconds per stream")
    p.add_argument("--speech-ratio", type=float, default=0.5,
                   help="share of each call that is customer speech (the rest: agent turns, line noise)")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--ramp", type=float, default=None,
                   help="seconds over which the streams start (default: one call length, so call starts are "
                        "spread evenly as in a contact centre; a short ramp makes a thundering herd)")
    p.add_argument("--calls-per-stream", type=int, default=2,
                   help="calls each stream makes back to back (a new session each), keeping N calls "
                        "running; figures cover the steady part after the ramp")
    p.add_argument("--uploads", type=int, default=0,
                   help="concurrent batch enrolments (POST /api/enroll, mu-law) sent back to back while "
                        "the streams run: live calls must keep their NORMAL p95 (issue #12)")
    p.add_argument("--upload-seconds", type=float, default=600.0,
                   help="audio per batch enrolment upload (the protocol's enrolment speech, repeated)")
    p.add_argument("--aculab-verifies", type=int, default=0,
                   help="concurrent Aculab Users API verify requests (POST, ten ~59 s sources each) sent back "
                        "to back while the streams run")
    add_cluster_arguments(p)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call_audio(protocol: Path, seconds: float, speech_ratio: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """One customer channel per speaker of the protocol, about `seconds` long: the
    speaker's test utterances as turns, separated by the agent's turns, during which the
    customer channel carries only line noise (-60 dBFS), so that customer speech is about
    `speech_ratio` of the call (1.0: back-to-back speech, as no real call has)."""
    rng = np.random.default_rng(seed)
    rows = [line.split(",") for line in (protocol / "test.csv").read_text().splitlines()[1:]]
    by_speaker: dict[str, list[Path]] = {}
    for _, spk, path in rows:
        by_speaker.setdefault(spk, []).append(protocol / path)
    calls = []
    total = int(seconds * 8000)
    for files in by_speaker.values():
        utts = [read_audio(f) for f in files]
        parts, n, i = [], 0, 0
        while n < total:
            u = utts[i % len(utts)]
            gap = int(len(u) * (1 - speech_ratio) / max(speech_ratio, 1e-3))
            noise = np.clip(rng.normal(0, 33, gap), -32768, 32767).astype(np.int16)   # ~ -60 dBFS
            parts += [u, noise]
            n += len(u) + gap
            i += 1
        calls.append(np.concatenate(parts)[:total])
    return calls


def encoder_share(m0: dict[str, float], m1: dict[str, float]) -> float | None:
    """Seconds of audio through the encoder per second of customer audio through the VAD
    between two /metrics readings: what a call costs the encoder."""
    audio = m1.get("vbgw_engine_audio_seconds", 0.0) - m0.get("vbgw_engine_audio_seconds", 0.0)
    enc = m1.get("vbgw_engine_encoder_audio_seconds", 0.0) - m0.get("vbgw_engine_encoder_audio_seconds", 0.0)
    return round(enc / audio, 3) if audio > 0 else None


def _parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The gateway in shared (several-instance) mode: PostgreSQL store, Redis fan-out and call
    directory on (docs/scale-out.md), to compare with the embedded default."""
    p.add_argument("--cluster", action="store_true",
                   help="run the gateway with cluster.mode=shared: PostgreSQL (--store-dsn) and Redis (--redis-url)")
    p.add_argument("--store-dsn", default=os.environ.get("VBGW_STORAGE__DSN") or "postgresql://root@127.0.0.1:5432/test",
                   help="PostgreSQL for --cluster (a schema of the run's own is made in it)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for --cluster")


def cluster_env(args: argparse.Namespace, port: int) -> dict[str, str]:
    """The environment of a shared-mode gateway (empty without --cluster): a PostgreSQL schema
    and a Redis prefix of the run's own, fresh secrets."""
    if not getattr(args, "cluster", False):
        return {}
    import base64
    import secrets
    run = secrets.token_hex(4)
    return {"VBGW_CLUSTER__MODE": "shared", "VBGW_CLUSTER__REDIS_URL": args.redis_url,
            "VBGW_CLUSTER__REDIS_PREFIX": f"bench-{run}", "VBGW_CLUSTER__SECRET": secrets.token_hex(24),
            "VBGW_CLUSTER__INSTANCE_ID": "bench", "VBGW_CLUSTER__ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "VBGW_STORAGE__DSN": args.store_dsn, "VBGW_STORAGE__PG_SCHEMA": f"bench_{run}",
            "VBGW_AUTH__HASH_SECRET": secrets.token_hex(16),
            "VBGW_ENCRYPTION__KEYS": base64.b64encode(os.urandom(32)).decode()}


async def drop_cluster_schema(env: dict[str, str]) -> None:
    """The run's PostgreSQL schema, dropped after a --cluster run."""
    if "VBGW_STORAGE__PG_SCHEMA" not in env:
        return
    import asyncpg
    conn = await asyncpg.connect(env["VBGW_STORAGE__DSN"])
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{env["VBGW_STORAGE__PG_SCHEMA"]}" CASCADE')
    finally:
        await conn.close()


class Server:
    def __init__(self, data_dir: Path, args: argparse.Namespace | None = None):
        self.data_dir = data_dir
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        # --cluster: the gateway (and `vbgw admin`) in shared mode
        self.env = cluster_env(args, self.port) if args is not None else {}

    def admin(self, *argv: str) -> str:
        """`vbgw admin ...` on the bench's data directory; its last output line."""
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "admin", "--data-dir", str(self.data_dir),
                              *argv], check=True, capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, **self.env}).stdout
        return out.strip().splitlines()[-1]

    def admin_bootstrap(self) -> str:
        return self.admin("bootstrap", "--tenant", "bench", "--profile", "bench").removeprefix("pat=")

    async def start(self, module: str = "gateway.cli", env: dict[str, str] | None = None) -> None:
        """Run `python -m <module> serve` (a bench may wrap the CLI to instrument the gateway).
        Every bench client connects from 127.0.0.1, so the per-address connection cap is off
        unless `env` sets it."""
        env = {**os.environ, "VBGW_EVENTS__JSONL_PATH": str(self.data_dir / "events.jsonl"),
               "VBGW_LOGGING__LEVEL": "warning", "VBGW_SERVER__MAX_CONNECTIONS_PER_CLIENT": "0", **self.env,
               **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", module, "serve", "--port", str(self.port),
                                      "--data-dir", str(self.data_dir)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.data_dir / "server.log", "w"))
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("gateway did not become ready; see " + str(self.data_dir / "server.log"))

    def rss_mb(self) -> float:
        """The gateway's resident memory now (MB)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _token(http, url, pat, master):
    async with http.post(f"{url}/api/token/", headers={"Authorization": f"Bearer {pat}"},
                         json={"agentId": "bench", "agentSkill": "bench", "masterId": master, "tenantId": "bench",
                               "vbProfile": "bench", "ccaasProvider": "OTHER"}) as r:
        return (await r.json())["data"]["token"]


async def _stream(ws_url: str, token: str, dialog: str, pcm: np.ndarray, paced: bool) -> None:
    frame = 1600  # 200 ms
    async with websockets.connect(f"{ws_url}/agent-vb-mw/stream?token={token}", max_size=None) as ws:
        await ws.send(json.dumps({"encoding": "l16", "sample_rate": 8000, "dialog_id": dialog}))
        await ws.recv()
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(pcm), frame)):
            await ws.send(pcm[start:start + frame].astype("<i2").tobytes())
            if paced:
                delay = t0 + (i + 1) * 0.2 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        await ws.send(b"")
        async for _ in ws:
            pass


async def _verification(http, url, token, results: list) -> None:
    async with http.get(f"{url}/verification", params={"users": "bench-user", "token": token},
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if isinstance(data, list) and data and data[0].get("result_type") == "NORMAL":
                    results.append(data[0])


async def run_level(n: int, args, url: str, ws_url: str, pat: str, calls: list[np.ndarray], server: Server) -> dict:
    ramp = args.seconds if args.ramp is None else args.ramp
    # No connection cap: N long-lived SSE streams plus the metrics sampler share this session.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        normal: list = []
        cpu0 = server.cpu_seconds()
        steady = SteadyState(http, url, server, ramp, n)
        m0 = _parse_metrics(await steady.metrics_text())
        steady.start()
        files = FileLoad(args, url, pat, server) if (args.uploads or args.aculab_verifies) else None
        if files is not None:
            await files.start(http)

        errors: list[str] = []

        async def one(i):
            await asyncio.sleep(ramp * i / max(1, n))
            for k in range(args.calls_per_stream):
                dialog = f"bench-{n}-{i}-{k}"
                tok = await _token(http, url, pat, dialog)
                sse = asyncio.create_task(_verification(http, url, tok, normal))
                try:
                    await _stream(ws_url, tok, dialog, calls[(i + k) % len(calls)], paced=True)
                except (websockets.WebSocketException, OSError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:120])      # a failed call fails the level
                await asyncio.sleep(0.5)
                sse.cancel()

        await asyncio.gather(*(one(i) for i in range(n)))
        cpu = server.cpu_seconds() - cpu0
        wall = steady.stop()
        text = await steady.metrics_text()
        file_report = await files.stop() if files is not None else {}
    # The engine keeps up (SteadyState) and no audio was dropped.
    first, last, worst, grew = steady.backlog_per_call(wall)
    m1 = _parse_metrics(text)
    dropped = m1.get("vbgw_engine_dropped_audio_seconds", 0.0)
    p95 = steady.normal_p95(text)
    rss = steady.rss
    return {"sessions": n, "ramp_s": ramp, "wall_s": round(wall, 1), "server_cpu_s": round(cpu, 1),
            "server_cores_per_stream": round(cpu / wall / n, 4) if n else 0.0,
            "backlog_per_stream_s_first_third": round(first, 2),
            "backlog_per_stream_s_last_third": round(last, 2), "backlog_per_stream_s_max": round(worst, 2),
            "backlog_grew": grew, "dropped_audio_s": dropped, "normal_results": len(normal),
            "encoder_audio_per_audio": encoder_share(m0, m1),
            "failed_calls": len(errors),
            **({"failed_call_errors": dict(collections.Counter(errors).most_common(5))} if errors else {}),
            "normal_result_delay_p95_s_steady": round(p95, 3) if p95 is not None else None,
            "server_rss_mb_start": round(rss[0]), "server_rss_mb_max": round(max(rss)),
            **file_report,
            "passes": (not grew and worst < 2.0 and dropped == 0 and not errors and p95 is not None and p95 < 1.0)}


def _wav(pcm: np.ndarray, subtype: str = "ULAW") -> bytes:
    import io
    buf = io.BytesIO()
    sf.write(buf, pcm, 8000, subtype=subtype, format="WAV")
    return buf.getvalue()


def _enrol_speech(protocol: Path, seconds: float, offset: int = 0) -> np.ndarray:
    """The protocol's enrolment speech, repeated to `seconds` (a long recording of real speech)."""
    rows = [line.split(",") for line in (protocol / "enrol.csv").read_text().splitlines()[1:]]
    speech = np.concatenate([read_audio(protocol / p) for _, _, p in rows[offset:offset + 8]])
    n = int(seconds * 8000)
    return np.tile(speech, n // len(speech) + 1)[:n]


class FileLoad:
    """Uploads sent back to back beside the live streams (issue #12): `--uploads` batch
    enrolments of `--upload-seconds` each, and `--aculab-verifies` Aculab verifies of ten
    ~59 s sources each. Their own figures: how many finished, how long each took."""

    def __init__(self, args, url: str, pat: str, server: Server):
        self.args, self.url, self.pat, self.server = args, url, pat, server
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.times: dict[str, list[float]] = {"upload": [], "aculab_verify": []}
        self.failures: dict[str, list[str]] = {"upload": [], "aculab_verify": []}

    async def start(self, http: aiohttp.ClientSession) -> None:
        a = self.args
        if a.uploads:
            wav = _wav(_enrol_speech(a.protocol, a.upload_seconds))
            self.tasks += [asyncio.create_task(self._loop(http, "upload", self._upload, wav, i))
                           for i in range(a.uploads)]
        if a.aculab_verifies:
            key = self.server.admin("user-group-key", "--tenant", "bench", "--profile", "bench").removeprefix("key=")
            auth = aiohttp.BasicAuth("bench/bench", key)
            sources = [_wav(_enrol_speech(a.protocol, 59, offset=k % 4)) for k in range(10)]
            reg = f"{self.url}/voice_biometrics/v1/user/register"
            async with http.put(reg, params={"user_id": "bench-aculab"}, data=sources[0], auth=auth) as r:
                if r.status != 200:
                    raise RuntimeError(f"Aculab register failed: {r.status} {await r.text()}")
            self.tasks += [asyncio.create_task(self._loop(http, "aculab_verify", self._verify, (auth, sources), i))
                           for i in range(a.aculab_verifies)]

    async def _loop(self, http, kind: str, send, payload, i: int) -> None:
        k = 0
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                status, text = await send(http, payload, f"{kind}-{i}-{k}")
            except aiohttp.ClientError as exc:
                status, text = 0, type(exc).__name__
            if status == 200:
                self.times[kind].append(time.monotonic() - t0)
            else:
                self.failures[kind].append(f"{status} {text[:120]}")
            k += 1

    async def _upload(self, http, wav: bytes, user: str) -> tuple[int, str]:
        form = aiohttp.FormData()
        for k, v in {"tenant_id": "bench", "profile_id": "bench", "ccaas_provider": "OTHER",
                     "biokeys[user_id]": user}.items():
            form.add_field(k, v)
        form.add_field("file", wav, filename=f"{user}.wav", content_type="audio/wav")
        async with http.post(f"{self.url}/api/enroll", data=form, headers={"Authorization": f"Bearer {self.pat}"},
                             timeout=aiohttp.ClientTimeout(total=None)) as r:
            return r.status, await r.text()

    async def _verify(self, http, payload, _name: str) -> tuple[int, str]:
        auth, sources = payload
        form = aiohttp.FormData()
        for k, wav in enumerate(sources, 1):
            form.add_field(f"Source{k}", wav, filename=f"s{k}.wav", content_type="audio/wav")
        async with http.post(f"{self.url}/voice_biometrics/v1/user/verify", data=form, auth=auth,
                             params={"user_id": "bench-aculab", "text_dependent": "false"},
                             timeout=aiohttp.ClientTimeout(total=None)) as r:
            return r.status, await r.text()

    async def stop(self) -> dict:
        """Let the requests in flight finish (they are what the live calls competed with)."""
        self.stopping.set()
        await asyncio.gather(*self.tasks)
        out = {}
        for kind, plural, n in (("upload", "uploads", self.args.uploads),
                                ("aculab_verify", "aculab_verifies", self.args.aculab_verifies)):
            if n:
                times = self.times[kind]
                out[f"{plural}_concurrent"] = n
                out[f"{plural}_done"] = len(times)
                out[f"{kind}_s_median"] = round(float(np.median(times)), 1) if times else None
                out[f"{kind}_failures"] = self.failures[kind][:3]
        return out


def _histogram(text: str, name: str) -> tuple[list[tuple[float, float]], float]:
    buckets, count = [], 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
    return buckets, count


def _p95_from_metrics(text: str, name: str, baseline: str | None = None) -> float | None:
    """p95 of a histogram, optionally of only what was observed after `baseline` (an earlier
    scrape of the same metrics), interpolated inside the bucket as histogram_quantile does."""
    buckets, count = _histogram(text, name)
    if baseline is not None:
        base, base_count = _histogram(baseline, name)
        base_by_le = dict(base)
        buckets = [(le, c - base_by_le.get(le, 0.0)) for le, c in buckets]
        count -= base_count
    if not count:
        return None
    target, prev_le, prev_c = 0.95 * count, 0.0, 0.0
    for le, c in buckets:
        if c >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (target - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return None


class SteadyState:
    """What the concurrency benches measure while N calls run, started evenly over `ramp`
    seconds: the engine's backlog (audio received, not yet through the VAD) and the gateway's
    memory sampled every second from /metrics, and the metrics at the end of the ramp, the
    baseline of the steady-state histograms. The engine keeps up when the backlog stays
    bounded once all calls run: per call under 2 s of audio at worst, the last third of the
    steady part no worse than the first (no growth)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, server: Server, ramp: float, n: int):
        self.http, self.url, self.server, self.ramp, self.n = http, url, server, ramp, n
        self.mtok = (server.data_dir / "metrics.token").read_text().strip()
        self.backlog: list[tuple[float, float]] = []
        self.rss: list[float] = [server.rss_mb()]
        self.at_ramp: str | None = None
        self.wall0 = time.monotonic()
        self._task: asyncio.Task | None = None

    async def metrics_text(self) -> str:
        async with self.http.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.mtok}"}) as r:
            return await r.text()

    def start(self) -> None:
        self.wall0 = time.monotonic()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            text = await self.metrics_text()
            t = time.monotonic() - self.wall0
            if t >= self.ramp and self.at_ramp is None:
                self.at_ramp = text                      # steady state starts: histogram baseline
            self.backlog.append((t, _parse_metrics(text).get("vbgw_engine_queue_depth", 0.0)))
            self.rss.append(self.server.rss_mb())
            await asyncio.sleep(1.0)

    def stop(self) -> float:
        """Stop sampling; the wall time since start."""
        if self._task is not None:
            self._task.cancel()
        return time.monotonic() - self.wall0

    def backlog_per_call(self, wall: float) -> tuple[float, float, float, bool]:
        """(worst in the first third, in the last third, worst overall, grew) of the steady part,
        in seconds of audio per call."""
        steady = [(t, d / 8000 / self.n) for t, d in self.backlog if t > self.ramp] or [(0.0, 0.0)]
        span = max(wall - self.ramp, 1e-9)
        first = [d for t, d in steady if t < self.ramp + span / 3] or [0.0]
        last = [d for t, d in steady if t > wall - span / 3] or [0.0]
        return max(first), max(last), max(d for _, d in steady), max(last) > max(first) + 1.0

    def normal_p95(self, text: str, histogram: str = "vbgw_normal_result_delay_seconds") -> float | None:
        """The steady-state p95 of the NORMAL result delay measured by the gateway (or of
        another of its histograms: vbgw_normal_scoring_seconds, the part spent scoring)."""
        return _p95_from_metrics(text, histogram, self.at_ramp)


@dataclass
class BenchGateway:
    server: Server
    url: str
    ws_url: str
    pat: str
    setup: Any = None                   # what fresh_gateway's `setup` returned


@asynccontextmanager
async def fresh_gateway(protocol: Path, prefix: str, setup: Callable[[Path], Any] | None = None,
                        args: argparse.Namespace | None = None):
    """A gateway in a subprocess on a new data directory (no backlog, dialogs or histogram
    counts carried over from another level), `setup(data_dir)` run before it starts, and
    `bench-user` enrolled; stopped on exit (with `args.cluster`, in shared mode on a PostgreSQL
    schema of its own, dropped on exit). RuntimeError if the enrolment failed."""
    server = Server(Path(tempfile.mkdtemp(prefix=prefix)), args)
    pat = server.admin_bootstrap()
    extra = setup(server.data_dir) if setup is not None else None
    await server.start()
    url, ws_url = f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}"
    try:
        if not await enrol_bench_user(url, ws_url, pat, protocol):
            raise RuntimeError("the enrolment of bench-user failed")
        yield BenchGateway(server, url, ws_url, pat, extra)
    finally:
        server.stop()
        await drop_cluster_schema(server.env)


async def enrol_bench_user(url: str, ws_url: str, pat: str, protocol: Path) -> bool:
    """Enrol `bench-user` from the protocol's first two enrolment files (direct stream + /enrol)."""
    enrol_rows = [line.split(",") for line in (protocol / "enrol.csv").read_text().splitlines()[1:]]
    enrol_pcm = np.concatenate([read_audio(protocol / p) for _, _, p in enrol_rows[:2]])
    async with aiohttp.ClientSession() as http:
        tok = await _token(http, url, pat, "bench-enrol")
        await _stream(ws_url, tok, "bench-enrol", enrol_pcm, paced=False)
        async with http.post(f"{url}/enrol", headers={"Authorization": f"Bearer {tok}"},
                             json={"user_id": "bench-user"}) as r:
            if r.status != 200:
                print("enrolment failed:", await r.text())
                return False
    return True


async def sweep(args, run_level: Callable[[int], Awaitable[dict]], criterion: str, verdict: str = "passed") -> int:
    """The levels of `--sessions` (25, 50, 75 and 100 % of it with `--sweep`), each run by
    `run_level(n)` (on one gateway, or a fresh one per level: see fresh_gateway): each level's
    result as a JSON line, then the largest N whose result's `verdict` says it met `criterion`."""
    levels = [max(1, args.sessions * k // 4) for k in (1, 2, 3, 4)] if args.sweep else [args.sessions]
    best = 0
    for n in levels:
        res = await run_level(n)
        res.setdefault("mode", "shared (PostgreSQL, Redis)" if getattr(args, "cluster", False) else "single (SQLite)")
        print(json.dumps(res), flush=True)
        if res[verdict]:
            best = n
    print(f"largest N with {criterion}: {best}")
    return 0


async def amain(args) -> int:
    calls = _call_audio(args.protocol, args.seconds, args.speech_ratio)

    async def level(n: int) -> dict:
        async with fresh_gateway(args.protocol, "vbgw-bench-", args=args) as gw:
            return await run_level(n, args, gw.url, gw.ws_url, gw.pat, calls, gw.server)
    try:
        return await sweep(args, level, "backlog < 2 s per stream, no growth, no drop, steady NORMAL p95 < 1 s",
                           verdict="passes")
    except RuntimeError as exc:                  # bench-user could not be enrolled
        print(exc)
        return 1


def main(args) -> int:
    return asyncio.run(amain(args))
