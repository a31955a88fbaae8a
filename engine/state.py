"""The per-session data model of the engine (coordinator-thread state)."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .types import Embedding, MilestoneKind, SpeakerChange, SpeechLimits
from .vad import CHUNK, VadStream

MAX_WINDOWS = 64            # finished windows kept per call before the oldest are folded (memory bound)


@dataclass
class _Window:
    speech_ms: int
    vector: np.ndarray | None = None
    done: bool = True             # False while its encoder job is queued or running


class _Speech:
    """Speech of one stream: finished windows' embeddings + the current window's audio."""

    def __init__(self, window_samples: int):
        self.window_samples = window_samples
        self.windows: list[_Window] = []
        self.buf: list[np.ndarray] = []
        self.buf_samples = 0
        self.buf_speech_ms = 0
        self.speech_ms = 0

    def add(self, audio: np.ndarray) -> list[tuple[_Window, np.ndarray]]:
        """Append VAD-passed audio; returns windows that became full (to be embedded)."""
        full = []
        if len(audio):
            self.buf.append(audio)
            self.buf_samples += len(audio)
        while self.buf_samples >= self.window_samples:
            cat = np.concatenate(self.buf)
            w = _Window(self.buf_speech_ms, done=False)
            self.windows.append(w)
            full.append((w, cat[: self.window_samples]))
            rest = cat[self.window_samples:]
            self.buf = [rest] if len(rest) else []
            self.buf_samples = len(rest)
            self.buf_speech_ms = 0
        return full

    def cut(self) -> tuple[_Window, np.ndarray] | None:
        """Close the current buffer as a (short) window now."""
        if not self.buf:
            return None
        cat = np.concatenate(self.buf)
        w = _Window(self.buf_speech_ms, done=False)
        self.windows.append(w)
        self.buf, self.buf_samples, self.buf_speech_ms = [], 0, 0
        return w, cat

    def partial(self, quantum: int = 1) -> np.ndarray:
        if not self.buf:
            return np.zeros(0, np.int16)
        cat = np.concatenate(self.buf)
        self.buf = [cat]
        n = len(cat) // quantum * quantum
        return cat[:n]

    def nbytes(self) -> int:
        return (sum(b.nbytes for b in self.buf)
                + sum(w.vector.nbytes + 64 for w in self.windows if w.vector is not None))

    def fold(self, keep: int = MAX_WINDOWS) -> None:
        """Bound a long call's memory: merge the two oldest embedded windows into one whose
        vector is their speech-weighted mean and whose weight is their sum, so every later
        weighted mean over the windows (session embedding, speaker-change reference) is
        unchanged."""
        while len(self.windows) > keep:
            a, b = self.windows[0], self.windows[1]
            if not (a.done and b.done):
                break                              # still being embedded: fold later
            if a.vector is None or b.vector is None:
                if a.vector is None:
                    del self.windows[0]            # nothing was embedded: carries no weight
                    continue
                del self.windows[1]
                continue
            wa, wb = max(a.speech_ms, 1), max(b.speech_ms, 1)
            merged = ((a.vector.astype(np.float64) * wa + b.vector * wb) / (wa + wb)).astype(np.float32)
            self.windows[:2] = [_Window(wa + wb, merged)]


@dataclass(eq=False)
class _Job:
    """One encoder input: a full (or cut) window, or the partial window of a milestone."""
    audio: np.ndarray
    window: _Window | None = None           # window job: fill its vector
    result: np.ndarray | None = None
    done: bool = False
    urgent: bool = False                     # a milestone waits for it (scheduler priority)
    state: "_State | None" = None


@dataclass(frozen=True)
class _Answer:
    """In an event list: answer a waiting caller here, i.e. only after the events before it
    were posted to the event loop (a flush must not return before its milestones arrive)."""
    callback: Callable
    value: object


@dataclass(eq=False)
class _Ticket:
    """An entry of a state's in-order result queue: a window whose embedding is awaited
    (speaker change) or a milestone (EARLY/NORMAL) awaiting its jobs. Tickets of a state
    resolve strictly in order, so a milestone always sees every earlier window embedded."""
    job: _Job | None = None                 # window ticket: the window's job
    kind: str | None = None                 # milestone ticket: "EARLY" | "NORMAL"
    windows: list[_Window] | None = None    # milestone: the windows it combines
    partial: _Job | None = None             # milestone: its partial-window job, if any
    partial_ms: int = 0
    speech_ms: int = 0
    arrived: float = 0.0
    # kind "SETTLED" / "SESSION": answers a waiting caller (with None / the session embedding)
    # once every earlier ticket has resolved and their events were posted (see _Answer)
    callback: Callable[[Embedding | None], None] | None = None

    def ready(self) -> bool:
        return (self.job is None or self.job.done) and (self.partial is None or self.partial.done)


class _State:
    def __init__(self, dialog_id: str, limits: SpeechLimits, on_event, window_samples: int):
        self.dialog_id = dialog_id
        self.limits = limits
        self.on_event = on_event
        self.pending: deque[tuple[float, np.ndarray]] = deque()
        self.pending_samples = 0
        self.carry = np.zeros(0, np.int16)          # < 256 samples left from the last take
        self.carry_t = 0.0
        self.vad = VadStream()
        self.speech = _Speech(window_samples)
        self.milestone_idx = 0
        self.last_milestone_ms = 0
        self.last_progress_ms = 0
        self.last_progress_t = 0.0
        self.change = SpeakerChange(False, None, None)
        self.min_scd: float | None = None
        self.scd_ref: np.ndarray | None = None          # speaker-change reference (first window)
        self.agent_ms = 0
        self.dropped_ms = 0
        self.audio_ms = 0
        self.closed = False
        self.lock = threading.Lock()
        self.tickets: deque[_Ticket] = deque()     # coordinator thread only

    def next_milestone(self) -> tuple[str, int] | None:
        """The next speech-count milestone: EARLY, then the first NORMAL. Refined NORMALs
        come with finished windows instead (see _Core.process), so they reuse the window
        embeddings already computed rather than re-embedding a partial window."""
        L = self.limits
        if self.milestone_idx == 0:
            return MilestoneKind.EARLY, L.early_ms
        if self.milestone_idx == 1:
            return MilestoneKind.NORMAL, L.verify_ms
        return None

    def refine_due(self) -> bool:
        return (self.milestone_idx >= 2
                and self.speech.speech_ms - self.last_milestone_ms >= max(1, self.limits.refine_ms))

    def take(self, max_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Pending audio in whole 256-sample chunks (the rest carried to the next take) and
        the arrival time of each chunk."""
        with self.lock:
            parts, times = [], []
            if len(self.carry):
                parts.append(self.carry)
                times.append(np.full(len(self.carry), self.carry_t))
            n = len(self.carry)
            while self.pending and (max_samples is None or n < max_samples):
                t, a = self.pending.popleft()
                self.pending_samples -= len(a)
                parts.append(a)
                times.append(np.full(len(a), t))
                n += len(a)
        if not parts:
            return np.zeros(0, np.int16), np.zeros(0)
        cat = np.concatenate(parts)
        tt = np.concatenate(times)
        k = len(cat) // CHUNK * CHUNK
        self.carry = cat[k:].copy()
        self.carry_t = float(tt[k]) if k < len(cat) else 0.0
        return cat[:k], tt[:k:CHUNK]

    def memory_bytes(self) -> int:
        with self.lock:
            pend = self.pending_samples * 2 + len(self.pending) * 64
        return 2048 + pend + self.carry.nbytes + self.vad.nbytes() + self.speech.nbytes()

