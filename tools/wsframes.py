"""Real-time WebSocket audio from many simulated streams at a small client cost (the load
simulators' sending path: `vbgw nice-sim`, `vbgw bench nice`).

A load client shares the machine with the gateway it measures (the benches run both on the
same cores), so every microsecond it spends per message is taken from the gateway. Sending a
20 ms message through a WebSocket library costs ~25 us of Python (a coroutine, a lock, a frame
object, a 4-byte mask key from the OS, the transport write) and a timer per stream wakes a task
50 times a second. Here each stream's messages are built once, up front, as the exact bytes
RFC 6455 puts on the wire (binary frames, FIN set, masked with a random key per frame, as a
client must), and one pacer task writes every stream's frames at their own times (stream start
+ k x frame length, as each stream's own timer would) straight to the streams' transports.

What the gateway receives is unchanged: one frame per message, per connection, in real time,
independent phases per stream (nothing is bunched: a frame due now is written now, on its own
connection). The library keeps the connection otherwise (handshake, the messages before and
after the audio, pings, the close): every write is a whole frame, on one thread, so the two
never interleave inside a frame."""
from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from typing import Callable

import numpy as np

OP_BINARY = 0x2
FIN = 0x80
MASK_BIT = 0x80
HIGH_WATER = 64 * 1024      # bytes queued in a transport beyond which its stream waits (TCP backpressure)
STALL_RETRY_S = 0.005


def _header(n: int) -> bytes:
    if n < 126:
        return bytes((FIN | OP_BINARY, MASK_BIT | n))
    if n < 1 << 16:
        return bytes((FIN | OP_BINARY, MASK_BIT | 126)) + n.to_bytes(2, "big")
    return bytes((FIN | OP_BINARY, MASK_BIT | 127)) + n.to_bytes(8, "big")


def client_frames(payload: bytes, size: int) -> list[bytes]:
    """`payload` cut into messages of `size` bytes (the last may be shorter), each as a masked
    binary client frame (RFC 6455 5.2/5.3): header, a fresh random 4-byte key, payload XOR key."""
    if size <= 0:
        raise ValueError("frame size must be positive")
    n_full, rest = divmod(len(payload), size)
    out: list[bytes] = []
    if n_full:
        body = np.frombuffer(payload, np.uint8, n_full * size).reshape(n_full, size)
        keys = np.frombuffer(os.urandom(4 * n_full), np.uint8).reshape(n_full, 4)
        masked = body ^ keys[:, np.arange(size) % 4]
        hdr = np.frombuffer(_header(size), np.uint8)
        rows = np.concatenate([np.broadcast_to(hdr, (n_full, len(hdr))), keys, masked], axis=1)
        out = [r.tobytes() for r in rows]
    if rest:
        key = os.urandom(4)
        tail = np.frombuffer(payload, np.uint8, rest, n_full * size)
        masked_tail = tail ^ np.frombuffer(key, np.uint8)[np.arange(rest) % 4]
        out.append(_header(rest) + key + masked_tail.tobytes())
    return out


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _Stream:
    __slots__ = ("transport", "frames", "t0", "period", "next", "done", "closed")

    def __init__(self, transport: asyncio.WriteTransport, frames: list[bytes], t0: float, period: float,
                 done: asyncio.Future, closed: Callable[[], bool]):
        self.transport = transport
        self.closed = closed
        self.frames = frames
        self.t0 = t0
        self.period = period
        self.next = 0
        self.done = done


class FramePacer:
    """Writes the frames of many streams, each frame at its stream's start + k x period, from
    one task of the running loop. A stream whose transport holds more than HIGH_WATER unsent
    bytes waits (the receiver is applying backpressure) and then catches up, as a paced sender
    behind a full socket does; a stream whose transport closed stops."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Stream]] = []
        self._seq = itertools.count()
        self._sleep: asyncio.Future | None = None     # the pacer's current wait (a new stream cuts it short)
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def send(self, transport: asyncio.WriteTransport, frames: list[bytes], period_s: float,
                   closed: Callable[[], bool] | None = None) -> int:
        """Write `frames` to `transport`, the first now and one every `period_s`; returns how
        many were written (fewer than all: the connection closed meanwhile). `closed()`: the
        WebSocket is no longer open (a close frame went either way: no data frame may follow);
        by default, the transport is closing."""
        if not frames:
            return 0
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # a pacer outlives an event loop (one per process, loops come and go: tests, asyncio.run
            # twice): whatever the old loop left is dead with it
            self._loop, self._heap, self._task, self._sleep = loop, [], None, None
        s = _Stream(transport, frames, time.monotonic(), period_s, loop.create_future(),
                    closed or transport.is_closing)
        heapq.heappush(self._heap, (s.t0, next(self._seq), s))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        elif self._sleep is not None and not self._sleep.done():
            self._sleep.set_result(None)
        try:
            return await asyncio.shield(s.done)
        except asyncio.CancelledError:
            s.next = len(s.frames)              # the pacer drops it at its next turn
            raise

    async def _run(self) -> None:
        """Until no stream is left: sleep to the earliest due frame, write every frame due."""
        loop = asyncio.get_running_loop()
        heap = self._heap
        while heap:
            delay = heap[0][0] - time.monotonic()
            if delay > 0:
                self._sleep = loop.create_future()
                timer = loop.call_later(delay, _wake, self._sleep)
                await self._sleep
                timer.cancel()
                self._sleep = None
                continue
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, s = heapq.heappop(heap)
                self._step(s, now)
        self._task = None

    def _step(self, s: _Stream, now: float) -> None:
        t = s.transport
        if s.next >= len(s.frames) or s.closed():
            if not s.done.done():
                s.done.set_result(min(s.next, len(s.frames)))
            return
        if t.get_write_buffer_size() > HIGH_WATER:
            heapq.heappush(self._heap, (now + STALL_RETRY_S, next(self._seq), s))
            return
        t.write(s.frames[s.next])
        s.next += 1
        if s.next >= len(s.frames):
            if not s.done.done():
                s.done.set_result(s.next)
            return
        heapq.heappush(self._heap, (s.t0 + s.next * s.period, next(self._seq), s))
