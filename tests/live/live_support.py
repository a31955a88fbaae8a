"""Helpers for the live-results tests: paced streaming, an SSE reader, enrolment, Node."""
from __future__ import annotations

import asyncio
import json
from collections import defaultdict
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import socketio
import websockets

from gateway.web.socketio import NAMESPACE, PATH
from support import protocol_audio, read_mulaw_bytes

P = "ls-other-tel"
NODE_DIR = Path(__file__).resolve().parent / "node"
CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"


def speech(name: str) -> bytes:
    return read_mulaw_bytes(protocol_audio(P, name))


async def paced_stream(gw, token: str, dialog_id: str, payload: bytes, speed: float = 1.0,
                       frame_bytes: int = 1600, end: bool = True) -> None:
    """Stream mu-law audio like a live call: one 200 ms frame every 200 ms / `speed`."""
    async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={token}") as ws:
        await ws.send(json.dumps({"encoding": "mulaw", "sample_rate": 8000, "dialog_id": dialog_id}))
        await ws.recv()
        t0 = time.monotonic()
        period = frame_bytes / 8000 / speed
        for i, start in enumerate(range(0, len(payload), frame_bytes)):
            await ws.send(payload[start:start + frame_bytes])
            delay = t0 + (i + 1) * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if end:
            await ws.send(b"")
            async for _ in ws:
                pass


class LiveCall:
    """A direct-stream call held open between sends, for tests that look at a call mid-way
    (a provisional result on screen, a request while the call is live). `async with` sends the
    RecognitionConfig; `send` streams audio (paced with `speed`, else as fast as the gateway
    reads it); `end` sends the empty message and waits for the server's close."""

    def __init__(self, gw, token: str, dialog_id: str, headers: dict[str, str] | None = None):
        self.gw, self.token, self.dialog_id, self.headers = gw, token, dialog_id, headers
        self.ws = None

    async def __aenter__(self) -> "LiveCall":
        self.ws = await websockets.connect(f"{self.gw.ws_url}/agent-vb-mw/stream?token={self.token}",
                                           additional_headers=self.headers)
        await self.ws.send(json.dumps({"encoding": "mulaw", "sample_rate": 8000, "dialog_id": self.dialog_id}))
        await self.ws.recv()
        return self

    async def send(self, payload: bytes, speed: float | None = None, frame_bytes: int = 1600) -> None:
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(payload), frame_bytes)):
            await self.ws.send(payload[start:start + frame_bytes])
            if speed:
                delay = t0 + (i + 1) * frame_bytes / 8000 / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def end(self) -> None:
        await self.ws.send(b"")
        async for _ in self.ws:
            pass

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()


async def enrol(gw, user_id: str = "cust-1688", dialog: str = "enrol-call") -> str:
    tok = await gw.token(dialog)
    await gw.stream(tok, dialog, speech("1688_enrol0"))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": user_id})
    assert status == 200, body
    return user_id


async def call_closed(gw, token: str) -> None:
    """Wait for the call's CALL_CLOSED (published once the engine has finished its audio)."""
    async with gw.http.get(f"{gw.url}/dialog-status", params={"token": token}) as resp:
        await SseReader(resp).until(lambda e: e["data"].get("status") == "CALL_CLOSED")


class SseReader:
    """Reads one text/event-stream response into events: {"id", "event", "data"} dicts, and
    {"comment": ...} for comment lines (heartbeats)."""

    def __init__(self, resp):
        self.resp = resp
        self.events: list[dict] = []

    async def next(self, timeout: float = 10.0) -> dict | None:
        """The next event or comment; None at the end of the stream."""
        ev: dict = {}
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), timeout)
            if not raw:
                return ev or None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if ev:
                    self.events.append(ev)
                    return ev
                continue
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                ev["data"] = json.loads(value)
            elif name in ("id", "event", "retry"):
                ev[name] = value

    async def until(self, pred, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.next(max(0.1, deadline - time.monotonic()))
            if ev is None:
                raise AssertionError(f"stream ended before the expected event; got {self.events}")
            if "data" in ev and pred(ev):
                return ev

    async def rest(self, timeout: float = 20.0) -> list[dict]:
        """Every event until the end of the stream."""
        out = []
        while (ev := await self.next(timeout)) is not None:
            if "data" in ev:
                out.append(ev)
        return out


def node_or_skip() -> str:
    """The node binary with tests/live/node installed by `npm ci`, or a skip (a failure in CI)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        msg = "node and npm are needed for the Node socket.io-client and browser tests"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing toolchain is a failure)")
        pytest.skip(msg)
    stamp = NODE_DIR / "node_modules" / ".vbgw-lock"
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    if not stamp.exists() or stamp.read_bytes() != lock:
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail(f"npm ci failed in {NODE_DIR}:\n{r.stderr[-2000:]}")
        stamp.write_bytes(lock)
    return node


def chromium_or_skip() -> Path:
    if not CHROMIUM.exists():
        msg = f"no browser at {CHROMIUM} (Debian's chromium package: apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing browser is a failure)")
        pytest.skip(msg)
    return CHROMIUM


class NodeScript:
    """A Node script from tests/live/node that prints JSON lines: {"ready": true, ...} once it is
    listening, then its result."""

    def __init__(self, node: str, script: str, *args: str):
        self.cmd = [node, str(NODE_DIR / script), *args]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 30.0) -> dict:
        self.proc = await asyncio.create_subprocess_exec(*self.cmd, cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = (await self.proc.stderr.read()).decode()[-2000:]
            raise AssertionError(f"{self.cmd[1]} ended before it was ready: {err}")
        first = json.loads(line)
        if not first.get("ready"):
            raise AssertionError(f"{self.cmd[1]} failed: {first}")
        return first

    async def result(self, timeout: float = 60.0) -> dict:
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            await asyncio.wait_for(self.proc.wait(), 15)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        if not line:
            raise AssertionError(f"{self.cmd[1]} printed no result: {(await self.proc.stderr.read()).decode()[-2000:]}")
        return json.loads(line)


class Browser:
    """Headless Chromium driven step by step (tests/live/node/browser.js): `await b.do(op, ...)`
    sends one command and returns its value, raising on failure. Use as `async with`."""

    def __init__(self, node: str, chromium: Path):
        self.cmd = [node, str(NODE_DIR / "browser.js"), str(chromium)]
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "Browser":
        self.proc = await asyncio.create_subprocess_exec(*self.cmd, cwd=NODE_DIR, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        first = await self._read(60)
        if not first.get("ready"):
            raise AssertionError(f"browser.js failed to start: {first}")
        return self

    async def _read(self, timeout: float) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = (await self.proc.stderr.read()).decode()[-2000:]
            raise AssertionError(f"browser.js ended: {err}")
        return json.loads(line)

    async def do(self, op: str, *, limit_s: float = 60.0, **kw):
        self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        answer = await self._read(limit_s)
        if not answer.get("ok"):
            raise AssertionError(f"browser {op} {kw}: {answer.get('error')}")
        return answer.get("value")

    async def wait(self, page: str, selector: str, timeout: float = 30.0) -> None:
        await self.do("wait", limit_s=timeout + 10, page=page, selector=selector, timeout=int(timeout * 1000))

    async def widget(self, page: str) -> dict:
        return await self.do("widget", page=page)

    async def __aexit__(self, *exc) -> None:
        try:
            if self.proc.returncode is None:
                self.proc.stdin.write(b'{"op": "close"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 15)
        except (Exception, asyncio.CancelledError):
            pass
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


class Agent:
    """A real Socket.IO client that records every event it receives."""

    def __init__(self):
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list] = defaultdict(list)
        self.changed = asyncio.Event()

        @self.sio.on("*", namespace=NAMESPACE)
        async def any_event(event, data=None):
            self.events[event].append(data)
            self.changed.set()

    async def connect(self, gw, headers: dict[str, str] | None = None) -> "Agent":
        await self.sio.connect(gw.url, socketio_path=PATH, namespaces=[NAMESPACE], transports=["websocket"],
                               headers=headers or {})
        return self

    async def ask(self, event: str, payload) -> dict:
        return await self.sio.call(event, payload, namespace=NAMESPACE, timeout=10)

    async def wait(self, pred, timeout: float = 20.0):
        async def loop():
            while not pred(self.events):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)

    async def close(self):
        await self.sio.disconnect()


def req(token: str, users: str = "") -> dict:
    return {"token": token, "users": users, "time": "2024-09-02T12:00:00Z"}
