"""Robust audio fingerprints (spectral-peak landmark hashes, Shazam-style) of 8 kHz audio.

A fingerprint is a set of (hash, time) pairs, never audio: it cannot be turned back into
sound or speech. The log-magnitude spectrogram (64 ms Hann window, 16 ms hop) is searched for
local maxima (the largest value in a ±NB_F bins x ±NB_T frames neighbourhood, at least
PEAK_FLOOR_DB above the frame's noise floor and above an absolute floor). Each peak (anchor)
is paired with up to FAN_OUT later peaks within DT_MAX frames and ±DF_MAX bins; a pair gives
a 32-bit hash (f1: 8 bits, f2 - f1: 8 bits, dt: 6 bits) and the anchor's frame index.

Two recordings of the same audio share many hashes at one constant time offset, whatever the
gain (peaks are local maxima), the codec (mu-law/A-law/L16), a time shift or trimming (the
offset absorbs it) and mild noise (strong peaks survive). Different audio shares a handful of
hashes at scattered offsets. `match()` counts the hashes that agree on the best offset, of
the distinctive ones (`distinctive`: a stationary sound's endlessly repeated hashes align at
every offset and tell nothing).

`Fingerprinter.add()` takes audio in pieces of any size and emits exactly the landmarks a
single pass would: peaks are purely local, and the frames that could still change (the last
HOLD frames) are kept until more audio arrives or `finish()` is called."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.ndimage import maximum_filter

SR = 8000
NFFT = 512
HOP = 128                      # 16 ms
NB_F, NB_T = 12, 8             # peak neighbourhood half-sizes (bins, frames)
DT_MAX = 40                    # target zone: up to 640 ms after the anchor
DF_MAX = 48                    # ... and within ±48 bins (±750 Hz)
FAN_OUT = 5
ABS_FLOOR_DB = -75.0           # dBFS per bin, roughly; quieter is silence
PEAK_FLOOR_DB = 10.0           # a peak must stand this far above its frame's median
F_LO, F_HI = 4, 240            # bins used: ~60 Hz to ~3.75 kHz
HOLD = DT_MAX + NB_T + 1       # frames kept back until more audio arrives
MIN_MATCH = 12                 # hashes on one offset for a match (see docs/fraud-signals.md)
MIN_MATCH_FRACTION = 0.04      # ... and at least this share of the query's hashes
MAX_HASHES = 40000             # per stream (~10 min of speech); beyond that nothing is added
PAIR_CELLS = 1 << 18           # candidate (anchor, peak) cells paired at once (memory bound)
MAX_REPEATS = 16               # a hash more frequent than this in one fingerprint is a stationary sound's
PAIR_CHUNK = 1 << 20           # (query hash, stored entry) pairs matched at once (~65 MB; speech: ~0.1 M)

_WIN = np.hanning(NFFT).astype(np.float32)


def _spectrogram(x: np.ndarray) -> np.ndarray:
    """(frames, NFFT/2+1) log-magnitude in dB of float32 audio in [-1, 1), in float32: peaks
    are decided by comparisons tens of dB apart, which float32's 7 digits resolve as float64
    does (identical landmarks on the bench's calls), at 30 % less CPU (the FFT, the log, the
    neighbourhood maximum and the median all move half the bytes)."""
    x = np.asarray(x, np.float32)
    n = 1 + (len(x) - NFFT) // HOP
    fr = np.lib.stride_tricks.as_strided(x, (n, NFFT), (x.strides[0] * HOP, x.strides[0]))
    mag = np.abs(scipy.fft.rfft(fr * _WIN, axis=1)) / np.float32(NFFT / 4)
    return np.float32(20) * np.log10(mag + np.float32(1e-9))


def _peaks(spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame and bin indices of the landmark peaks of a spectrogram block."""
    s = spec[:, F_LO:F_HI]
    local = maximum_filter(s, size=(2 * NB_T + 1, 2 * NB_F + 1), mode="constant", cval=-1e9)
    # the median of each frame's bins (as np.median: the mean of the two middle values of an
    # even count), from one partition: np.median's own checks cost more than the partition
    m = s.shape[1]
    part = np.partition(s, (m // 2 - 1, m // 2), axis=1)
    mid = part[:, m // 2 - 1:m // 2 + 1] if m % 2 == 0 else part[:, m // 2:m // 2 + 1]
    floor = np.mean(mid, axis=1, keepdims=True) + PEAK_FLOOR_DB
    is_peak = (s == local) & (s > floor) & (s > ABS_FLOOR_DB)
    t, f = np.nonzero(is_peak)
    return t, f + F_LO


def _pairs(t: np.ndarray, f: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and anchor frames for the peaks selected by the boolean mask `anchors`: each
    anchor with the first FAN_OUT later peaks (in time, then frequency order) within DT_MAX
    frames (dt >= 1) and DF_MAX bins, in that order."""
    order = np.lexsort((f, t))
    t, f, anchors = t[order].astype(np.int64), f[order].astype(np.int64), anchors[order]
    idx = np.flatnonzero(anchors)
    # the peaks after each anchor within DT_MAX frames are a run of the sorted list: [i+1, hi)
    hi = np.searchsorted(t, t[idx] + DT_MAX, side="right")
    widths = hi - idx - 1
    out_h, out_t = [], []
    start = 0
    while start < len(idx):
        # Anchors in chunks whose candidate matrix (anchors x the widest zone among them) stays
        # under PAIR_CELLS: speech has a few dozen peaks in a target zone, crafted audio can have
        # thousands, and the memory must stay bounded whatever the input. The cells of a chunk
        # only grow with its length, so the longest that fits is one search.
        zone = widths[start:start + PAIR_CELLS]
        cells = np.maximum.accumulate(zone) * np.arange(1, len(zone) + 1)
        stop = start + max(1, int(np.searchsorted(cells, PAIR_CELLS, side="right")))
        width = int(widths[start:stop].max())
        ci, chi = idx[start:stop], hi[start:stop]
        start = stop
        if width <= 0:
            continue
        j = ci[:, None] + 1 + np.arange(width)[None, :]
        inside = j < chi[:, None]
        j = np.minimum(j, len(t) - 1)
        dt = t[j] - t[ci, None]
        df = f[j] - f[ci, None]
        ok = inside & (dt >= 1) & (np.abs(df) <= DF_MAX)
        ok &= np.cumsum(ok, axis=1) <= FAN_OUT
        rows, cols = np.nonzero(ok)             # row-major: anchor by anchor, peaks in order
        a = ci[rows]
        out_h.append((f[a] << 14) | ((df[rows, cols] + 128) << 6) | dt[rows, cols])
        out_t.append(t[a])
    if not out_h:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    return np.concatenate(out_h).astype(np.uint32), np.concatenate(out_t).astype(np.uint32)


class Fingerprinter:
    """Streaming landmark extraction for one audio stream (int16 8 kHz in any piece sizes)."""

    def __init__(self, max_hashes: int = MAX_HASHES):
        self.buf = np.zeros(0, np.float32)
        self.buf_frame0 = 0          # absolute frame index of buf[0]
        self.done_upto = 0           # anchors with frame < this are emitted
        self.max_hashes = max_hashes
        self._h: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self.count = 0

    def add(self, pcm) -> None:
        x = np.asarray(pcm)
        x = x.astype(np.float32) / np.float32(32768.0) if x.dtype == np.int16 else np.asarray(x, np.float32)
        if not len(x) or self.count >= self.max_hashes:
            return
        self.buf = np.concatenate([self.buf, x])
        # work in blocks of >= 2 s of new frames, so the per-call overhead stays small
        if self._frames_in_buf() - (self.done_upto - self.buf_frame0) >= HOLD + 125:
            self._process(final=False)

    def finish(self) -> None:
        """Emit the held-back landmarks: the stream has ended (later audio would continue
        without the right-hand context those peaks were found with)."""
        self._process(final=True)

    def _frames_in_buf(self) -> int:
        return 0 if len(self.buf) < NFFT else 1 + (len(self.buf) - NFFT) // HOP

    def _extract(self, final: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Landmarks of the anchors not yet emitted (up to the hold-back unless final), and
        the absolute frame up to which they go."""
        nfr = self._frames_in_buf()
        lo = self.done_upto - self.buf_frame0
        if nfr == 0:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint32), self.done_upto
        end = nfr if final else nfr - HOLD
        if end <= lo:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint32), self.done_upto
        t, f = _peaks(_spectrogram(self.buf))
        # The buffer keeps NB_T frames of left context before done_upto (see _process), and
        # anchors stop HOLD frames before its end, so every peak used has its whole
        # neighbourhood: the result equals a single pass over the whole stream.
        h, tt = _pairs(t, f, (t >= lo) & (t < end))
        return h, tt + np.uint32(self.buf_frame0), self.buf_frame0 + end

    def _process(self, final: bool) -> None:
        h, tt, new_done = self._extract(final)
        if len(h):
            room = self.max_hashes - self.count
            self._h.append(h[:room])
            self._t.append(tt[:room])
            self.count += min(len(h), room)
        self.done_upto = new_done
        keep_from = max(0, (new_done - self.buf_frame0) - NB_T)
        self.buf = self.buf[keep_from * HOP:]
        self.buf_frame0 += keep_from

    def landmarks(self, include_tail: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(hashes uint32, anchor frames uint32) emitted so far; with include_tail, also the
        held-back part as it stands now (for a check in the middle of a call), without
        changing the stream's state."""
        parts_h, parts_t = list(self._h), list(self._t)
        if include_tail:
            h, tt, _ = self._extract(final=True)
            parts_h.append(h[: max(0, self.max_hashes - self.count)])
            parts_t.append(tt[: max(0, self.max_hashes - self.count)])
        if not parts_h:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
        if len(self._h) > 1:
            self._h = [np.concatenate(self._h)]
            self._t = [np.concatenate(self._t)]
        return np.concatenate(parts_h).astype(np.uint32), np.concatenate(parts_t).astype(np.uint32)

    def nbytes(self) -> int:
        return int(self.buf.nbytes + 8 * self.count + 64)


def fingerprint(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-signal fingerprint of int16 8 kHz audio."""
    fp = Fingerprinter()
    fp.add(pcm)
    fp.finish()
    return fp.landmarks()


def pack(hashes: np.ndarray, times: np.ndarray) -> bytes:
    """Storage form: little-endian uint32 pairs (hash, frame), in hash order (stable), so a
    stored fingerprint is matched without sorting it at every check (`match`). A set of
    pairs: the order carries nothing else (fingerprints stored unsorted still match)."""
    h, t = np.asarray(hashes, "<u4"), np.asarray(times, "<u4")
    order = np.argsort(h, kind="stable")
    return np.stack([h[order], t[order]], axis=1).tobytes()


def unpack(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    a = np.frombuffer(blob, "<u4").reshape(-1, 2)
    return a[:, 0].astype(np.uint32), a[:, 1].astype(np.uint32)


@dataclass(frozen=True)
class Match:
    matches: int          # hashes agreeing on the best offset (±1 frame)
    query_hashes: int
    offset_frames: int    # reference time - query time at the best offset

    @property
    def fraction(self) -> float:
        return self.matches / max(self.query_hashes, 1)

    @property
    def is_match(self) -> bool:
        return self.matches >= MIN_MATCH and self.fraction >= MIN_MATCH_FRACTION


def distinctive(hashes: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The landmarks that can tell one recording from another: those whose hash occurs at most
    MAX_REPEATS times in the fingerprint. A stationary sound (a line's hum, a tone) peaks at the
    same bins in every quiet frame and repeats a few hashes hundreds of times; they align at
    every offset, so two different calls on one humming line "matched" (~290 of ~3,750 hashes
    on one offset: a false replay), and they pair quadratically. Speech repeats a hash at most
    5-8 times in 6-9 minutes (ls-other-tel, fsdd-tel), so speech loses nothing."""
    h = np.asarray(hashes)
    if len(h) <= MAX_REPEATS:
        return h, np.asarray(times)
    _, inv, c = np.unique(h, return_inverse=True, return_counts=True)
    keep = c[inv] <= MAX_REPEATS
    return (h, np.asarray(times)) if keep.all() else (h[keep], np.asarray(times)[keep])


def match(query: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> Match:
    """`query` against `ref`, on their distinctive landmarks (`distinctive`): `matches` of the
    query's `query_hashes` distinctive hashes agree on the best offset (±1 frame)."""
    rh, rt = distinctive(*ref)
    if len(rh) >= 2 and not bool(np.all(rh[1:] >= rh[:-1])):
        order = np.argsort(rh, kind="stable")     # stored by pack(): already in hash order
        rh, rt = rh[order], rt[order]
    return _match_table(query, rh, rt, np.zeros(len(rh), np.int32), 1)[0]


_GROUP_SHIFT = 40               # _match_table's vote key: reference index above, offset below
_OFFSET_BIAS = 1 << 39          # offsets are frame differences, far inside ±2^39


def _match_table(query: tuple[np.ndarray, np.ndarray], th: np.ndarray, tt: np.ndarray, tref: np.ndarray,
                 size: int) -> list[Match]:
    """The match of `query` against each of `size` references merged in one table sorted by
    hash (`th`; `tt` the entries' frames, `tref` their reference): every (query hash, entry)
    pair with the same hash votes for its reference's time offset; a reference's best offset
    is its first (smallest) with the most votes, counting the offsets ±1 frame next to it;
    its matches are the query hashes with a pair within ±1 frame of that offset.

    The pairs are built PAIR_CHUNK at a time (query hashes in hash order, in runs): a
    stationary sound (a tone, a hum) repeats a few hashes at every frame, and a 60 s tone
    against a stored copy of itself pairs 70 million times; all at once that was ~3 GB, and
    a 10-minute one ~15 GB, enough to take the gateway down. Speech pairs in one chunk."""
    qh, qt = distinctive(*query)
    nq = len(qh)
    out = [Match(0, nq, 0)] * size
    if not nq or not len(th):
        return out
    # the query in hash order: the table is searched in one sweep (3-4x faster than in the
    # call's time order; nothing below depends on the query's order)
    order = np.argsort(qh, kind="stable")
    qh, qt = np.asarray(qh)[order], np.asarray(qt).astype(np.int64)[order]
    lo = np.searchsorted(th, qh, "left")
    cnt = np.searchsorted(th, qh, "right") - lo
    cum = np.cumsum(cnt)
    if not cum[-1]:
        return out
    chunks = []
    start = 0
    while start < nq:
        base = int(cum[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(cum, base + PAIR_CHUNK, side="right")))
        chunks.append((start, min(stop, nq)))
        start = stop

    def pairs(a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = cnt[a:b]
        total = int(c.sum())
        qi = np.repeat(np.arange(a, b), c)
        ri = np.repeat(lo[a:b] - (np.cumsum(c) - c), c) + np.arange(total)
        return qi, tref[ri].astype(np.int64), tt[ri].astype(np.int64) - qt[qi]

    # (reference, offset) votes, sorted by reference then offset; a key ±1 stays inside its
    # reference (the bias keeps offsets far from the reference's bits)
    vals = np.zeros(0, np.int64)
    counts = np.zeros(0, np.int64)
    kept = None
    for a, b in chunks:
        qi, g, d = pairs(a, b)
        v, c = np.unique((g << _GROUP_SHIFT) + (d + _OFFSET_BIAS), return_counts=True)
        if len(vals):
            v, inv = np.unique(np.concatenate([vals, v]), return_inverse=True)
            c = np.bincount(inv, weights=np.concatenate([counts, c])).astype(np.int64)
        vals, counts = v, c
        kept = (qi, g, d) if len(chunks) == 1 else None
    tot = counts.copy()
    for nb in (-1, 1):
        j = np.searchsorted(vals, vals + nb)
        ok = (j < len(vals)) & (vals[np.minimum(j, len(vals) - 1)] == vals + nb)
        tot[ok] += counts[j[ok]]
    grp = vals >> _GROUP_SHIFT
    starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
    gid = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(vals)]))
    cand = np.flatnonzero(tot == np.maximum.reduceat(tot, starts)[gid])
    first = cand[np.r_[True, gid[cand][1:] != gid[cand][:-1]]]
    best = np.zeros(size, np.int64)
    best[grp[first]] = (vals[first] & ((1 << _GROUP_SHIFT) - 1)) - _OFFSET_BIAS
    # each query hash counted once per reference within ±1 frame of its best offset (the
    # chunks split the query's hashes, so their counts add up)
    hits = np.zeros(size, np.int64)
    for a, b in chunks:
        qi, g, d = kept if kept is not None else pairs(a, b)
        sel = np.abs(d - best[g]) <= 1
        hits += np.bincount(np.unique(g[sel] * nq + qi[sel]) // nq, minlength=size)
    for r in grp[first].tolist():
        out[r] = Match(int(hits[r]), nq, int(best[r]))
    return out


class FingerprintIndex:
    """Many stored fingerprints in one hash-sorted table, matched against a query in one
    vectorised pass: `match_many(query)[i] == match(query, refs[i])` for every i (tested),
    at a fraction of the cost when a user has hundreds of stored fingerprints: one search of
    the merged table instead of one search, sort and count per fingerprint, and no Python
    step per fingerprint. Immutable once built; 12 bytes per stored distinctive hash (hash,
    frame, reference)."""

    def __init__(self, refs: list[tuple[np.ndarray, np.ndarray]]):
        refs = [distinctive(h, t) for h, t in refs]
        self.size = len(refs)
        lens = np.array([len(h) for h, _ in refs], np.int64)
        if not len(refs) or not lens.sum():
            self.h = np.zeros(0, np.uint32)
            self.t = np.zeros(0, np.uint32)
            self.ref = np.zeros(0, np.int32)
            return
        h = np.concatenate([np.asarray(r[0], np.uint32) for r in refs])
        t = np.concatenate([np.asarray(r[1], np.uint32) for r in refs])
        order = np.argsort(h, kind="stable")
        self.h, self.t = h[order], t[order]
        self.ref = np.repeat(np.arange(len(refs), dtype=np.int32), lens)[order]

    def extended(self, refs: list[tuple[np.ndarray, np.ndarray]]) -> "FingerprintIndex":
        """A new index of this one's references followed by `refs` (numbered after them):
        the new hashes are merged into the sorted table (one copy, no sort of the table)."""
        new = FingerprintIndex(refs)
        out = FingerprintIndex([])
        out.size = self.size + new.size
        pos = np.searchsorted(self.h, new.h, "right")
        out.h = np.insert(self.h, pos, new.h)
        out.t = np.insert(self.t, pos, new.t)
        out.ref = np.insert(self.ref, pos, new.ref + np.int32(self.size))
        return out

    @property
    def entries(self) -> int:
        return len(self.h)

    def nbytes(self) -> int:
        return int(self.h.nbytes + self.t.nbytes + self.ref.nbytes)

    def match_many(self, query: tuple[np.ndarray, np.ndarray]) -> list[Match]:
        """`match(query, ref)` for each reference, in the order they were given."""
        return _match_table(query, self.h, self.t, self.ref, self.size)
