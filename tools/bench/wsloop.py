"""`vbgw bench wsloop`: what one WebSocket message costs the event loop, asyncio's against uvloop's.

A bare aiohttp WebSocket endpoint (it reads and drops messages: no connector, no dialog) on the
loop under test, in this process; a client process (`websockets` on asyncio's loop, whose
timers are finer than uvloop's 1 ms: each socket's messages arrive at their own moments, as
from independent callers, not bunched into one wakeup) opens `--sockets` sockets and sends 160-byte messages every
`--frame-ms` in real time, as NICE CXone does (20 ms of mu-law). The server's CPU is read over
the middle half of the run (getrusage), so the connection setup and teardown are left out.
Output: one JSON line per loop with the server's cores and microseconds per message.

Why: at NICE's 50 messages a second per socket the loop's own cost per message is what a
contact adds over a direct stream of 200 ms frames (docs/benchmarks.md, gateway/infra/eventloop.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys
import time

from aiohttp import web

from gateway.infra import eventloop


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sockets", type=int, default=200)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--frame-ms", type=int, default=20)
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")


async def _handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    async for _ in ws:
        pass
    return ws


async def _level(args, loop_name: str) -> dict:
    app = web.Application()
    app.router.add_get("/ws", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    site = web.SockSite(runner, sock)
    await site.start()
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.bench.wsloop", "--client", str(port), str(args.sockets), str(args.seconds),
        str(args.frame_ms))
    try:
        await asyncio.sleep(args.seconds * 0.25)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(args.seconds * 0.5)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await client.wait()
    finally:
        await runner.cleanup()
    cores = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (t1 - t0)
    rate = args.sockets * 1000 / args.frame_ms
    return {"loop": loop_name, "sockets": args.sockets, "messages_per_s": rate, "server_cores": round(cores, 3),
            "us_per_message": round(cores / rate * 1e6, 1)}


async def _client(port: int, n: int, seconds: float, frame_ms: int) -> None:
    import websockets
    step = frame_ms / 1000

    async def one(i: int) -> None:
        await asyncio.sleep(i * step / n)                       # spread the sends over a frame
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            t0, k, frame = time.monotonic(), 0, b"\x7f" * (8 * frame_ms)
            while time.monotonic() - t0 < seconds:
                await ws.send(frame)
                k += 1
                delay = t0 + k * step - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    await asyncio.gather(*(one(i) for i in range(n)))


def main(args) -> int:
    loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
    for name in loops:
        if eventloop.loop_factory(name)[1] != name:
            print(json.dumps({"loop": name, "error": "not installed"}))
            continue
        print(json.dumps(eventloop.run(_level(args, name), name)), flush=True)
    return 0


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--client":
    asyncio.run(_client(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
