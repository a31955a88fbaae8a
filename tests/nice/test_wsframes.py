"""The simulators' sending path (tools/wsframes.py): pre-built client frames are exactly what a
WebSocket library would send (a real server reads the payloads back), and the pacer writes many
streams' frames, each stream in order, each at its own time, stopping at a closed connection."""
from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import pytest
import websockets
from aiohttp import web
from aiohttp.test_utils import TestServer
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader

from tools.wsframes import FramePacer, client_frames


def _parse(frame: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    gen = Frame.parse(reader.read_exact, mask=True)
    try:
        next(gen)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [1, 160, 125, 126, 4000, 70000])
def test_frames_are_masked_binary_client_frames_carrying_the_payload(size):
    payload = os.urandom(size * 3 + size // 2)
    frames = client_frames(payload, size)
    assert len(frames) == 3 + (1 if size // 2 else 0)
    parsed = [_parse(f) for f in frames]
    assert all(p.opcode is Opcode.BINARY and p.fin for p in parsed)
    assert b"".join(p.data for p in parsed) == payload
    assert [len(p.data) for p in parsed[:3]] == [size] * 3
    # a fresh key per frame (RFC 6455 5.3): the masked bytes differ even for equal payloads
    same = client_frames(b"\x00" * size * 2, size)
    assert same[0] != same[1]


def test_a_bad_size_is_refused():
    with pytest.raises(ValueError):
        client_frames(b"abc", 0)


def _app(received: dict[str, list[tuple[float, bytes]]], close_after: int | None = None) -> web.Application:
    """A WebSocket endpoint recording each binary message's arrival (per `?name=`), closing
    after `close_after` of them, answering a text message with "bye"."""
    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        got = received.setdefault(request.query["name"], [])
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.BINARY:
                got.append((time.monotonic(), msg.data))
                if close_after is not None and len(got) >= close_after:
                    await sock.close()
                    break
            else:
                await sock.send_str("bye")
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


def _ws_url(server: TestServer, name: str) -> str:
    return str(server.make_url("/ws").with_scheme("ws").with_query(name=name))


async def test_the_pacer_sends_every_stream_in_order_at_its_own_pace():
    received: dict[str, list[tuple[float, bytes]]] = {}
    pacer = FramePacer()
    period = 0.02
    async with TestServer(_app(received)) as server:
        async def one(name: str, start_after: float) -> tuple[int, float]:
            await asyncio.sleep(start_after)
            async with websockets.connect(_ws_url(server, name)) as ws:
                payload = bytes(range(256)) * 5
                t0 = time.monotonic()
                sent = await pacer.send(ws.transport, client_frames(payload, 160), period)
                elapsed = time.monotonic() - t0
                await ws.send("done")               # the library's own frames still work after
                assert await ws.recv() == "bye"
                return sent, elapsed

        results = await asyncio.gather(*(one(f"s{i}", i * 0.007) for i in range(5)))
    payload = bytes(range(256)) * 5
    for (sent, elapsed), i in zip(results, range(5)):
        assert sent == 8
        got = received[f"s{i}"]
        assert b"".join(d for _, d in got) == payload
        # paced, not sent at once: the last frame went out 7 periods after the first
        assert elapsed >= 7 * period * 0.9
        assert got[-1][0] - got[0][0] >= 7 * period * 0.9


async def test_the_pacer_stops_a_stream_whose_connection_closed():
    received: dict[str, list[tuple[float, bytes]]] = {}
    pacer = FramePacer()
    async with TestServer(_app(received, close_after=3)) as server:
        async with websockets.connect(_ws_url(server, "c")) as ws:
            sent = await pacer.send(ws.transport, client_frames(b"\x01" * 160 * 50, 160), 0.01,
                                    closed=lambda: ws.protocol.state is not State.OPEN)
            await ws.wait_closed()
    assert 3 <= sent < 50
    assert len(received["c"]) == 3


def test_a_pacer_serves_one_event_loop_after_another():
    """One pacer per process (the simulator's): a loop that ended mid-stream leaves nothing
    that blocks the next loop's streams."""
    pacer = FramePacer()

    async def run(cut_short: bool) -> int:
        async with TestServer(_app({})) as server, websockets.connect(_ws_url(server, "x")) as ws:
            send = pacer.send(ws.transport, client_frames(b"\x02" * 160 * 10, 160), 0.02)
            if cut_short:
                try:
                    return await asyncio.wait_for(send, 0.05)
                except asyncio.TimeoutError:
                    return -1
            return await send

    assert asyncio.run(run(cut_short=True)) == -1
    assert asyncio.run(run(cut_short=False)) == 10
