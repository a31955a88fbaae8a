"""The engine's per-session data model: what one call's customer audio has become so far.

A `SessionState` is written by one thread at a time: the event loop appends pushed audio to
`pending` under its lock; everything else belongs to the coordinator thread (or, for a file,
to the file thread that owns its `FileEmbedder`). Its speech is a list of finished `Window`s
(their embeddings, filled in by `EncoderJob`s) plus the audio of the current window, so memory
is bounded whatever the call length. `Ticket`s queue the session's results in order.
"""
from __future__ import annotations

import enum
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .types import Embedding, MilestoneKind, SessionEvent, SpeakerChange, SpeechLimits
from .vad import CHUNK, VadStream

MAX_WINDOWS = 64            # finished windows kept per call before the oldest are folded (memory bound)


@dataclass
class Window:
    """A window of a session's speech (cfg.window_s, or shorter where cut): its net speech,
    which weights it in every mean, and its embedding once its encoder job is done."""
    speech_ms: int
    vector: np.ndarray | None = None
    done: bool = True             # False while its encoder job is queued or running


class SessionSpeech:
    """Speech of one stream: finished windows' embeddings + the current window's audio."""

    def __init__(self, window_samples: int):
        self.window_samples = window_samples
        self.windows: list[Window] = []
        self.buf: list[np.ndarray] = []
        self.buf_samples = 0
        self.buf_speech_ms = 0
        self.speech_ms = 0

    def add(self, audio: np.ndarray) -> list[tuple[Window, np.ndarray]]:
        """Append VAD-passed audio; returns windows that became full (to be embedded)."""
        full = []
        if len(audio):
            self.buf.append(audio)
            self.buf_samples += len(audio)
        while self.buf_samples >= self.window_samples:
            cat = np.concatenate(self.buf)
            w = Window(self.buf_speech_ms, done=False)
            self.windows.append(w)
            full.append((w, cat[: self.window_samples]))
            rest = cat[self.window_samples:]
            self.buf = [rest] if len(rest) else []
            self.buf_samples = len(rest)
            self.buf_speech_ms = 0
        return full

    def cut(self) -> tuple[Window, np.ndarray] | None:
        """Close the current buffer as a (short) window now."""
        if not self.buf:
            return None
        cat = np.concatenate(self.buf)
        w = Window(self.buf_speech_ms, done=False)
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
            self.windows[:2] = [Window(wa + wb, merged)]


@dataclass(eq=False)
class EncoderJob:
    """One encoder input: a full (or cut) window, or the partial window of a milestone."""
    audio: np.ndarray
    window: Window | None = None             # window job: fill its vector
    result: np.ndarray | None = None
    done: bool = False
    urgent: bool = False                     # a milestone waits for it (scheduler priority)
    state: SessionState | None = None        # whose tickets wait for it (None: a file's job)


@dataclass(frozen=True)
class Answer:
    """In an event list: answer a waiting caller here, i.e. only after the events before it
    were posted to the event loop (a flush must not return before its milestones arrive)."""
    callback: Callable[[Embedding | None], None]
    value: Embedding | None


# What the pipeline hands the coordinator, in order: an event for the session's listener, or
# an Answer for a caller waiting on the session.
Outcome = tuple["SessionState", SessionEvent | Answer]


class TicketKind(enum.Enum):
    """What a ticket of a session's in-order result queue stands for."""
    WINDOW = "window"          # a window whose embedding is awaited (speaker change)
    MILESTONE = "milestone"    # an EARLY or NORMAL score awaiting its jobs
    SETTLED = "settled"        # answers a waiting caller (None) once everything before it resolved
    SESSION = "session"        # answers a waiting caller with the session embedding so far


@dataclass(eq=False)
class Ticket:
    """An entry of a state's in-order result queue (see TicketKind). Tickets of a state
    resolve strictly in order, so a milestone always sees every earlier window embedded, and
    a caller answered by a SETTLED or SESSION ticket has had every earlier event posted first
    (see Answer)."""
    kind: TicketKind
    job: EncoderJob | None = None              # WINDOW: the window's job
    milestone: MilestoneKind | None = None     # MILESTONE: EARLY or NORMAL
    windows: list[Window] | None = None        # MILESTONE, SESSION: the windows it combines
    partial: EncoderJob | None = None          # MILESTONE, SESSION: its partial-window job, if any
    partial_ms: int = 0
    speech_ms: int = 0
    arrived: float = 0.0
    callback: Callable[[Embedding | None], None] | None = None   # SETTLED, SESSION

    def ready(self) -> bool:
        return (self.job is None or self.job.done) and (self.partial is None or self.partial.done)


class SessionState:
    """One session (a call's customer audio, or a file): pending audio, VAD stream, speech,
    milestone bookkeeping, speaker change, and its in-order tickets."""

    def __init__(self, dialog_id: str, limits: SpeechLimits,
                 on_event: Callable[[SessionEvent], None] | None, window_samples: int):
        self.dialog_id = dialog_id
        self.limits = limits
        self.on_event = on_event
        self.pending: deque[tuple[float, np.ndarray]] = deque()
        self.pending_samples = 0
        self.carry = np.zeros(0, np.int16)          # < 256 samples left from the last take
        self.carry_t = 0.0
        self.vad = VadStream()
        self.speech = SessionSpeech(window_samples)
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
        self.tickets: deque[Ticket] = deque()     # coordinator thread only

    def next_milestone(self) -> tuple[MilestoneKind, int] | None:
        """The next speech-count milestone: EARLY, then the first NORMAL. Refined NORMALs
        come with finished windows instead (see Pipeline.feed), so they reuse the window
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

