"""The results bus: typed results (gateway/calls/results.py) from calls to whoever listens (SSE,
Socket.IO, benchmarks). `ResultsBus` is the interface surfaces and calls use; `LocalResultsBus`
is the one-process implementation: an in-memory pub/sub whose subscribers get bounded queues, a
slow subscriber losing its oldest messages (and being told so), never blocking a call.

A bus of several gateway instances (issue #17) implements the same interface: `publish` stays
synchronous for the publishing call (it numbers and keeps the message locally and forwards it,
e.g. to Redis, from a task of its own), subscribers on other instances are fed from that shared
channel, and `history` is a coroutine so that it may ask the shared store. Messages cross
processes as `Result.to_json()`."""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

from gateway.calls.results import Result

CallKey = tuple[str, ...]   # Dialog.key: (tenant_id, dialog_id, serial)


@dataclass(frozen=True, slots=True)
class BusMessage:
    """A published result: its number within its call (`seq`, from 1: the SSE event id) and
    when it was published."""
    payload: Result
    seq: int = 0
    ts: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        return self.payload.kind


class Subscription:
    """One listener's bounded queue of a call's messages."""

    def __init__(self, bus: "LocalResultsBus", key: CallKey, maxsize: int):
        self.bus, self.key = bus, key
        self.queue: asyncio.Queue[BusMessage] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, msg: BusMessage) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(msg)

    async def get(self, timeout: float | None = None) -> BusMessage | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self.bus._unsubscribe(self)


class ResultsBus(Protocol):
    """What calls publish to and surfaces read from."""

    def publish(self, key: CallKey, payload: Result) -> BusMessage:
        """Number the message within its call, keep it in the call's recent history, offer it to
        every subscriber of the call. Never blocks, never raises for a slow subscriber."""
        ...

    async def history(self, key: CallKey, after_seq: int = 0) -> list[BusMessage]:
        """The call's recent messages numbered above `after_seq`, oldest first (bounded: see
        `history_len`)."""
        ...

    @property
    def history_len(self) -> int:
        """How many recent messages a call's history keeps (a reconnecting SSE client that
        missed more is brought up to date instead of replayed)."""
        ...

    def subscribe(self, key: CallKey, maxsize: int = 256) -> Subscription: ...

    def forget(self, key: CallKey) -> None:
        """The call is retired: drop its history and numbering."""
        ...

    def subscriber_count(self) -> int: ...


class LocalResultsBus:
    """Messages are numbered per call (1, 2, 3, ...): the number is a call's SSE event id, and a
    counter shared by every call would tell one tenant's clients how much the others were doing.
    A call's numbers restart when it is forgotten (retired)."""

    def __init__(self, history: int = 64):
        self._subs: dict[CallKey, set[Subscription]] = defaultdict(set)
        self._history: dict[CallKey, list[BusMessage]] = defaultdict(list)
        self._history_len = history
        self._seqs: dict[CallKey, itertools.count] = {}

    @property
    def history_len(self) -> int:
        return self._history_len

    def publish(self, key: CallKey, payload: Result) -> BusMessage:
        seq = self._seqs.get(key)
        if seq is None:
            seq = self._seqs[key] = itertools.count(1)
        msg = BusMessage(payload, next(seq))
        hist = self._history[key]
        hist.append(msg)
        if len(hist) > self._history_len:
            del hist[0]
        for sub in list(self._subs.get(key, ())):
            sub.offer(msg)
        return msg

    async def history(self, key: CallKey, after_seq: int = 0) -> list[BusMessage]:
        return self.recent(key, after_seq)

    def recent(self, key: CallKey, after_seq: int = 0) -> list[BusMessage]:
        """`history` for code that runs in this process only (tests, benchmarks)."""
        return [m for m in self._history.get(key, ()) if m.seq > after_seq]

    def subscribe(self, key: CallKey, maxsize: int = 256) -> Subscription:
        sub = Subscription(self, key, maxsize)
        self._subs[key].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    def forget(self, key: CallKey) -> None:
        self._history.pop(key, None)
        self._seqs.pop(key, None)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
