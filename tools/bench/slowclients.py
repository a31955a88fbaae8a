"""`vbgw bench slowclients`: the audit's slow-client case (issue #12 item 4).

A gateway in a subprocess with its shipped limits (config/default.toml, overridable with
--env KEY=VALUE). Hostile clients, spread over --addresses loopback source addresses
(127.0.0.2, 127.0.0.3, ...), open at once and never behave:

- idle: TCP connections that send nothing;
- slowloris: request headers trickled one line every --trickle-s seconds, never finished;
- sse: GET /dialog-status with a valid token, then never a byte read (4 KiB receive buffer);
- stream: direct-stream WebSocket upgrades (valid tokens) that never send a RecognitionConfig
  and never read;
- sio: Socket.IO (Engine.IO WebSocket) connections that never authenticate and never read.

None of them reads, so the server's closing is seen in the socket's TCP state (CLOSE_WAIT or
reset), not by reading. Meanwhile a well-behaved client on 127.0.0.1 measures GET /healthz
every 50 ms, and the gateway's RSS and open descriptors are sampled every second. After
--duration seconds the remaining hostile sockets are closed and, --settle seconds later,
/healthz and memory are measured once more. Reported (JSON): per kind, how many were accepted,
refused (503 TOO_MANY_CONNECTIONS) and closed by the server, and when; /healthz latency
before, during and after; the gateway's RSS and descriptors before, at peak and after."""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tools.bench.stream import Server, _token

KINDS = ("idle", "slowloris", "sse", "stream", "sio")
TCP_CLOSE_WAIT, TCP_CLOSE = 8, 7


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--idle", type=int, default=200, help="idle TCP connections")
    p.add_argument("--slowloris", type=int, default=200, help="connections trickling request headers")
    p.add_argument("--sse", type=int, default=300, help="never-reading SSE clients")
    p.add_argument("--stream", type=int, default=150, help="silent, never-reading direct streams")
    p.add_argument("--sio", type=int, default=150, help="unauthenticated, never-reading Socket.IO clients")
    p.add_argument("--addresses", type=int, default=4, help="loopback source addresses the hostile clients use")
    p.add_argument("--duration", type=float, default=90.0, help="seconds the hostile clients are held")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after they are closed before the last look")
    p.add_argument("--trickle-s", type=float, default=5.0, help="slowloris: seconds between header lines")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="gateway environment overrides, e.g. VBGW_SERVER__MAX_CONNECTIONS_PER_CLIENT=0")


@dataclass
class Hostile:
    kind: str
    sock: socket.socket
    opened: float
    refused: bool = False
    closed_at: float | None = None


@dataclass
class Samples:
    healthz: dict[str, list[float]] = field(default_factory=lambda: {"before": [], "during": [], "after": []})
    healthz_errors: int = 0
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tcp_state(sock: socket.socket) -> int | None:
    """The socket's TCP state (Linux TCP_INFO), or None once it was reset."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return None
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return None


def _ws_upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def _connect(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # never reads: let the window close soon
    s.setblocking(False)
    s.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


async def _open_hostile(kind: str, port: int, source: str, first: bytes | None) -> Hostile:
    s = await _connect(port, source)
    h = Hostile(kind, s, time.monotonic())
    if first:
        s.send(first)
    return h


async def _watch(h: Hostile, trickle_s: float, stop: asyncio.Event) -> None:
    """Until the server closes `h` (or the bench ends): slowloris sends a header line now and then."""
    last = time.monotonic()
    while not stop.is_set():
        state = _tcp_state(h.sock)
        if state is None or state in (TCP_CLOSE_WAIT, TCP_CLOSE):
            h.closed_at = time.monotonic()
            # A refusal is an HTTP 503 the server wrote before closing; peeking does not read it away.
            try:
                h.refused = b" 503 " in h.sock.recv(64, socket.MSG_PEEK)[:16]
            except OSError:
                pass
            return
        if h.kind == "slowloris" and time.monotonic() - last >= trickle_s:
            try:
                h.sock.send(b"X-Slow: 1\r\n")
            except OSError:
                pass
            last = time.monotonic()
        await asyncio.sleep(0.5)


async def _probe(url: str, samples: Samples, phase: dict, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while not stop.is_set():
            t = time.monotonic()
            try:
                async with http.get(f"{url}/healthz") as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                samples.healthz[phase["name"]].append(time.monotonic() - t)
            else:
                samples.healthz_errors += 1
            await asyncio.sleep(0.05)


async def _sample_server(pid: int, samples: Samples, stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.rss_mb.append(_rss_mb(pid))
        samples.fds.append(_fds(pid))
        await asyncio.sleep(1.0)


def _ms(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"n": len(values), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)}


async def amain(args) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    data_dir = Path(tempfile.mkdtemp(prefix="vbgw-bench-slow-"))
    server = Server(data_dir)
    pat = server.admin_bootstrap()
    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("VBGW_SERVER__MAX_CONNECTIONS_PER_CLIENT", "256")     # the shipped default, not the benches' 0
    await server.start(env=env)
    pid, port = server.proc.pid, server.port
    url = f"http://127.0.0.1:{port}"
    samples, phase, stop = Samples(), {"name": "before"}, asyncio.Event()
    tasks = [asyncio.create_task(_probe(url, samples, phase, stop)),
             asyncio.create_task(_sample_server(pid, samples, stop))]
    try:
        await asyncio.sleep(5)
        rss_before, fds_before = _rss_mb(pid), _fds(pid)
        async with aiohttp.ClientSession() as http:
            sse_tokens = [await _token(http, url, pat, f"slow-sse-{i}") for i in range(max(1, args.sse // 50))]
            stream_tokens = [await _token(http, url, pat, f"slow-stream-{i}") for i in range(args.stream)]
        sources = [f"127.0.0.{2 + i}" for i in range(args.addresses)]
        plan: list[tuple[str, bytes | None]] = (
            [("idle", None)] * args.idle
            + [("slowloris", b"GET /healthz HTTP/1.1\r\nHost: x\r\n")] * args.slowloris
            + [("sse", f"GET /dialog-status?token={sse_tokens[i % len(sse_tokens)]} HTTP/1.1\r\nHost: x\r\n\r\n"
                .encode()) for i in range(args.sse)]
            + [("stream", _ws_upgrade(f"/agent-vb-mw/stream?token={t}")) for t in stream_tokens]
            + [("sio", _ws_upgrade("/agent-socket/socket.io/?EIO=4&transport=websocket"))] * args.sio)
        phase["name"] = "during"
        started = time.monotonic()
        hostile: list[Hostile] = []
        for i, (kind, first) in enumerate(plan):
            try:
                hostile.append(await _open_hostile(kind, port, sources[i % len(sources)], first))
            except OSError as exc:
                print(f"could not open a {kind} connection: {exc}", flush=True)
        opened_s = time.monotonic() - started
        watch_stop = asyncio.Event()
        watchers = [asyncio.create_task(_watch(h, args.trickle_s, watch_stop)) for h in hostile]
        await asyncio.sleep(max(0.0, args.duration - (time.monotonic() - started)))
        watch_stop.set()
        await asyncio.gather(*watchers)
        peak_rss, peak_fds = max(samples.rss_mb), max(samples.fds)
        for h in hostile:
            h.sock.close()
        phase["name"] = "after"
        await asyncio.sleep(args.settle)
        rss_after, fds_after = _rss_mb(pid), _fds(pid)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.stop()
    by_kind = {}
    for kind in KINDS:
        hs = [h for h in hostile if h.kind == kind]
        closed = [h.closed_at - h.opened for h in hs if h.closed_at is not None and not h.refused]
        by_kind[kind] = {"opened": len(hs), "refused_503": sum(h.refused for h in hs),
                         "closed_by_server": len(closed), "still_open_at_end": sum(h.closed_at is None for h in hs),
                         "closed_after_s_p50": round(statistics.median(closed), 1) if closed else None,
                         "closed_after_s_max": round(max(closed), 1) if closed else None}
    res = {"duration_s": args.duration, "addresses": args.addresses, "opened_in_s": round(opened_s, 1),
           "gateway_env": env, "clients": by_kind,
           "healthz": {k: _ms(v) for k, v in samples.healthz.items()}, "healthz_errors": samples.healthz_errors,
           "gateway_rss_mb": {"before": round(rss_before, 1), "peak": round(peak_rss, 1),
                              "after_close": round(rss_after, 1)},
           "gateway_fds": {"before": fds_before, "peak": peak_fds, "after_close": fds_after},
           "loadavg_1m": round(os.getloadavg()[0], 2), "data_dir": str(data_dir)}
    print(json.dumps(res, indent=1), flush=True)
    return 0


def main(args) -> int:
    return asyncio.run(amain(args))
