"""`vbgw stream FILE`: stream a WAV file through the direct stream like a contact-centre
connector would, and print the call's statuses and verification results as they arrive.

    vbgw stream call.wav --token TOKEN --dialog-id call-42 [--users cust-1] [--url http://127.0.0.1:8080]
    vbgw stream call.wav --pat PAT --tenant acme --profile retail [--users cust-1]   # makes the token

The results come from the gateway's own surfaces (GET /dialog-status and GET /verification,
server-sent events), followed from before the first frame so none is missed; with --users the
last line is the call's on-demand verification. Exit 0 when the call went through, 2 with one
line naming the cause otherwise."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path

import numpy as np

from connectors import codecs
from connectors.base import ConnectorError
from connectors.codecs import SUPPORTED_RATES
from gateway.cli.client import ClientError, connection_failure, create_token, describe, http_base, ondemand, sse, ws_base

FRAME_S = 0.2


def add_cli(sub) -> None:
    p = sub.add_parser("stream", help="stream a WAV file as a call (direct stream) and print results as they arrive")
    p.add_argument("file", type=Path, metavar="FILE.wav", help="mono (a stereo file's first channel is sent)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (default http://127.0.0.1:8080)")
    p.add_argument("--token", help="session token of the call (POST /api/token/)")
    p.add_argument("--dialog-id", help="the call's masterId (required with --token: the token's masterId)")
    p.add_argument("--pat", help="instead of --token: a personal access token; a session token is made for the call")
    p.add_argument("--tenant", help="with --pat: tenant name or id")
    p.add_argument("--profile", help="with --pat: VB profile name or id")
    p.add_argument("--ani", help="with --pat: the caller's number (customProperties.Ani)")
    p.add_argument("--users", help="comma-separated user ids to verify the call against (1 to 5)")
    p.add_argument("--speed", type=float, default=1.0, help="pacing: 1 = real time (default), 4 = four times")
    p.add_argument("--fast", action="store_true", help="send as fast as the gateway reads")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    p.set_defaults(fn=main)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """The file's first channel at its own rate (the direct stream takes every SUPPORTED_RATE),
    decoded as the gateway decodes uploads (connectors.codecs)."""
    if not path.is_file():
        raise ClientError(f"no such file: {path}")
    try:
        return codecs.read_wav(path.read_bytes())
    except ConnectorError as exc:
        if exc.code == "BAD_SAMPLE_RATE":
            raise ClientError(f"{path}: {exc.message}; the gateway takes {', '.join(map(str, SUPPORTED_RATES))} Hz") from None
        raise ClientError(f"cannot read {path} as audio: {exc.message}") from None


class _Printer:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    def __call__(self, source: str, text: str, data=None) -> None:
        if self.as_json:
            print(json.dumps({"source": source, "data": data if data is not None else text}), flush=True)
        else:
            print(f"{source}: {text}", flush=True)


async def _follow_status(http, base: str, token: str, out: _Printer) -> None:
    async for event, data in sse(http, f"{base}/dialog-status", {"token": token}):
        if event == "end":
            break
        out("status", data.get("status", "?") + (f" ({data['reason']})" if data.get("reason") else ""), data)


async def _follow_verification(http, base: str, token: str, users: list[str], out: _Printer) -> None:
    async for event, data in sse(http, f"{base}/verification", {"users": ",".join(users), "token": token}):
        if event == "end":
            break
        for row in data if isinstance(data, list) else [data]:
            out("verification", describe(row), row)


async def _send(url: str, token: str, dialog_id: str, pcm: np.ndarray, rate: int, speed: float, out: _Printer) -> None:
    import websockets
    frame = int(rate * FRAME_S)
    try:
        ws = await websockets.connect(f"{url}/agent-vb-mw/stream?token={token}", open_timeout=10)
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace")[:300] if exc.response.body else ""
        why = {401: "the session token was refused (wrong, expired or revoked)",
               409: "another stream is already feeding this call"}.get(status, body)
        raise ClientError(f"stream refused ({status}): {why}") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise ClientError(connection_failure(exc, url)) from None
    async with ws:
        await ws.send(json.dumps({"encoding": "l16", "sample_rate": rate, "dialog_id": dialog_id}))
        first = json.loads(await ws.recv())
        if "error" in first:
            raise ClientError(f"stream refused: {first['error']['code']}: {first['error']['message']}")
        out("stream", f"{first.get('event')} ({len(pcm) / rate:.1f} s of audio at {rate} Hz, dialog {dialog_id})", first)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, i in enumerate(range(0, len(pcm), frame)):
            await ws.send(pcm[i:i + frame].astype("<i2").tobytes())
            if speed > 0:
                await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_S / speed - loop.time()))
        await ws.send(b"")
        async for raw in ws:
            msg = json.loads(raw)
            if "error" in msg:
                raise ClientError(f"stream ended with {msg['error']['code']}: {msg['error']['message']}")
            out("stream", msg.get("event", "?"), msg)


async def run(args) -> int:
    import aiohttp
    out = _Printer(args.json)
    pcm, rate = read_wav(args.file)
    base = http_base(args.url)
    users = [u.strip() for u in (args.users or "").split(",") if u.strip()]
    if bool(args.token) == bool(args.pat):
        raise ClientError("give either --token (with --dialog-id) or --pat (with --tenant and --profile)")
    if args.token and not args.dialog_id:
        raise ClientError("--dialog-id is required with --token: the masterId the token was made for")
    if args.pat and not (args.tenant and args.profile):
        raise ClientError("--pat needs --tenant and --profile")
    dialog_id = args.dialog_id or f"cli-{uuid.uuid4()}"
    async with aiohttp.ClientSession() as http:
        try:
            token = args.token or await create_token(http, base, args.pat, dialog_id, args.tenant, args.profile,
                                                     args.ani)
            followers = [asyncio.create_task(_follow_status(http, base, token, out))]
            if users:
                followers.append(asyncio.create_task(_follow_verification(http, base, token, users, out)))
            await asyncio.sleep(0.3)          # subscribed before the first frame
            for f in followers:
                if f.done():
                    f.result()                 # a refused subscription (401, ...) is the error to report
            await _send(ws_base(args.url), token, dialog_id, pcm, rate, 0 if args.fast else args.speed, out)
            done, pending = await asyncio.wait(followers, timeout=60)
            for f in pending:
                f.cancel()
            for f in done:
                f.result()
            if users:
                final = await ondemand(http, base, token, users)
                out("result", describe(final), final)
        except aiohttp.ClientConnectorError as exc:
            raise ClientError(connection_failure(exc, base)) from None
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except ClientError as exc:
        print(f"vbgw stream: {exc}", file=sys.stderr)
        return 2
