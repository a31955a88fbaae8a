"""The results bus: typed results from dialogs to whoever listens (SSE, Socket.IO, events).
In one process an in-memory pub/sub; subscribers get bounded queues and a slow subscriber
loses its oldest messages (and is told so), never blocking a dialog."""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

DialogKey = tuple[str, ...]   # Dialog.key: (tenant_id, dialog_id, serial)


@dataclass(frozen=True)
class BusMessage:
    kind: str                  # "status" | "clean_speech" | "verification" | ...
    data: dict[str, Any]
    seq: int = 0
    ts: float = field(default_factory=time.time)


class Subscription:
    def __init__(self, bus: "ResultsBus", key: DialogKey, maxsize: int):
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


class ResultsBus:
    """Messages are numbered per dialog (1, 2, 3, ...): the number is a dialog's SSE event id,
    and a counter shared by every dialog would tell one tenant's clients how much the others
    were doing. A dialog's numbers restart when it is forgotten (retired)."""

    def __init__(self, history: int = 64):
        self._subs: dict[DialogKey, set[Subscription]] = defaultdict(set)
        self._history: dict[DialogKey, list[BusMessage]] = defaultdict(list)
        self._history_len = history
        self._seqs: dict[DialogKey, itertools.count] = {}

    def publish(self, key: DialogKey, kind: str, data: dict[str, Any]) -> BusMessage:
        seq = self._seqs.get(key)
        if seq is None:
            seq = self._seqs[key] = itertools.count(1)
        msg = BusMessage(kind, data, next(seq))
        hist = self._history[key]
        hist.append(msg)
        if len(hist) > self._history_len:
            del hist[0]
        for sub in list(self._subs.get(key, ())):
            sub.offer(msg)
        return msg

    def history(self, key: DialogKey, after_seq: int = 0) -> list[BusMessage]:
        return [m for m in self._history.get(key, ()) if m.seq > after_seq]

    def subscribe(self, key: DialogKey, maxsize: int = 256) -> Subscription:
        sub = Subscription(self, key, maxsize)
        self._subs[key].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    def forget(self, key: DialogKey) -> None:
        self._history.pop(key, None)
        self._seqs.pop(key, None)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
