"""Users' stored fingerprints, kept unpacked and indexed between PAD checks.

A PAD check matches a call against every stored fingerprint of the user it verifies: up to
`keep_verify_fingerprints` (1000 by default) of a frequent caller, checked at every NORMAL
and on-demand result. Reading, decrypting and unpacking them each time, then matching them
one by one, made the check grow with the caller's history: against 1000 stored calls of ~32 s,
166 ms of CPU per check, 25 ms with the index below (`vbgw bench replay`, docs/benchmarks.md).

`StoredPrints.get()` asks the store only for the rows' ids (cheap: no hashes, no decryption),
fetches just the rows it has not seen, and answers from blocks of `FingerprintIndex` (one
vectorised match per block instead of one match per fingerprint). Rows never change in place
(a newer fingerprint of the same call is a new row id; a key rotation re-seals the same
hashes), so a block stays right as long as its rows exist; rows deleted since (retention,
opt-out, user deletion) are left out of the answer, and a block mostly of deleted rows is
rebuilt from the live ones. Every check answers for the rows the store listed when it began,
on every node of a cluster.

The cache is bounded (`max_bytes`, least recently used users leave first); it holds
landmark hashes (never audio, not invertible to speech), in memory only."""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np

from engine.fraud.fingerprint import FingerprintIndex, Match, unpack
from gateway.store.base import FingerprintRef, Repository

BLOCK_ENTRIES = 1 << 18        # hashes per index block (~3 MB): bounds one match's memory


@dataclass(frozen=True)
class _Block:
    refs: tuple[FingerprintRef, ...]     # in the index's reference order
    index: FingerprintIndex


@dataclass(frozen=True)
class UserPrints:
    """A user's stored fingerprints as the store had them at one moment."""
    blocks: tuple[_Block, ...]
    live: frozenset[int]                 # row ids that exist (blocks may hold deleted ones)

    def __bool__(self) -> bool:
        return bool(self.live)

    def nbytes(self) -> int:
        return sum(b.index.nbytes() for b in self.blocks)

    def matches(self, query: tuple[np.ndarray, np.ndarray] | None,
                exclude_dialog: str | None = None) -> list[tuple[str, Match]]:
        """(kind, match) of `query` against each live stored fingerprint, oldest first,
        leaving out those of `exclude_dialog` (CPU work: run it on the fraud worker)."""
        if query is None:
            return []
        out = []
        for b in self.blocks:
            for ref, m in zip(b.refs, b.index.match_many(query)):
                if ref.id in self.live and ref.dialog_id != exclude_dialog:
                    out.append((ref.id, ref.kind, m))
        return [(kind, m) for _, kind, m in sorted(out, key=lambda x: x[0])]


class _Entry:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.blocks: tuple[_Block, ...] = ()
        self.nbytes = 0


class StoredPrints:
    """The cache (one per gateway process). `run` runs CPU work off the event loop (the
    fraud worker): unpacking and indexing new rows."""

    def __init__(self, store: Repository, run: Callable[[Callable[[], Any]], Awaitable[Any]],
                 max_bytes: int = 64 << 20):
        self.store = store
        self.run = run
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.nbytes = 0

    async def get(self, profile_id: str, user_id: str) -> UserPrints:
        refs = await self.store.fingerprint_refs(profile_id, user_id)
        key = (profile_id, user_id)
        live = frozenset(r.id for r in refs)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        self._entries.move_to_end(key)
        async with entry.lock:
            # blocks still mostly of live rows stay; the others' live rows are indexed again
            kept = tuple(b for b in entry.blocks if 2 * sum(r.id in live for r in b.refs) >= len(b.refs))
            covered = {r.id for b in kept for r in b.refs}
            new_ids = [r.id for r in refs if r.id not in covered]
            blocks = kept
            if new_ids:
                rows = await self.store.fingerprints(profile_id, user_id, ids=new_ids)
                blocks = tuple(await self.run(lambda: _add(kept, rows)))
            self._set(key, entry, blocks if live else ())
        return UserPrints(blocks, live)

    def forget(self, profile_id: str, user_id: str) -> None:
        """Drop the user's entry (opt-out). A check that began before it still answers from
        what it read; nothing of it is kept afterwards."""
        e = self._entries.pop((profile_id, user_id), None)
        if e is not None:
            self.nbytes -= e.nbytes
            e.blocks, e.nbytes = (), 0

    def _set(self, key: tuple[str, str], entry: _Entry, blocks: tuple[_Block, ...]) -> None:
        if self._entries.get(key) is not entry:     # evicted or forgotten meanwhile: not kept
            return
        size = sum(b.index.nbytes() for b in blocks)
        self.nbytes += size - entry.nbytes
        entry.blocks, entry.nbytes = blocks, size
        if not blocks:                              # no stored rows: nothing to keep
            del self._entries[key]
            return
        # least recently used users leave first; the one just read stays unless it alone is
        # over the bound (then nothing of it is kept: its next check reads it again)
        for k in list(self._entries):
            if self.nbytes <= self.max_bytes:
                break
            if k == key and entry.nbytes <= self.max_bytes:
                continue
            e = self._entries.pop(k)
            self.nbytes -= e.nbytes
            e.blocks, e.nbytes = (), 0


def _add(blocks: tuple[_Block, ...], rows) -> tuple[_Block, ...]:
    """`blocks` with `rows` added: into the last block while it has room (merged into its
    sorted table: a user's calls arrive one by one, and a block per call would make every
    check one match per call again), then in new blocks of at most BLOCK_ENTRIES hashes (a
    fingerprint larger than that alone in one)."""
    out = list(blocks)
    batch: list[tuple[FingerprintRef, tuple[np.ndarray, np.ndarray]]] = []
    size = 0
    into_last = bool(out)               # the batch goes into out[-1], else into a new block
    for row in rows:
        h, t = unpack(row.hashes)
        cap = BLOCK_ENTRIES - (out[-1].index.entries if into_last else 0)
        if size + len(h) > cap and (batch or into_last):
            _flush(out, batch, into_last)
            batch, size, into_last = [], 0, False
        batch.append((FingerprintRef(row.id, row.kind, row.dialog_id), (h, t)))
        size += len(h)
    _flush(out, batch, into_last)
    return tuple(out)


def _flush(out: list[_Block], batch: list, into_last: bool) -> None:
    if not batch:
        return
    refs, prints = tuple(r for r, _ in batch), [p for _, p in batch]
    if into_last:
        out[-1] = _Block(out[-1].refs + refs, out[-1].index.extended(prints))
    else:
        out.append(_Block(refs, FingerprintIndex(prints)))
