"""The scoring engine: per-dialog sessions, a VAD coordinator, an encoder scheduler, scoring.

Data flow (docs/scoring.md has the long version):

  push() (event loop) -> session.pending (int16, arrival time)      cheap append
  coordinator thread ("vbgw-engine"), every FEED_EVERY_S:
     take up to `ITER_CAP_S` of pending audio per session
     silero VAD, batched across sessions (one ORT call per 32 ms chunk index)
     speech chunks (+ padding) -> the session's current window buffer
     full window (window_s of audio) -> encoder job + window ticket
     EARLY -> partial-window job; first NORMAL -> the window is cut there (one job)
     milestone -> ticket on the session's in-order ticket queue
  encoder threads ("vbgw-encoder-N", cfg.threads): jobs one per thread, urgent first
     (milestones and what they wait for), then background windows
  file threads ("vbgw-files-N", cfg.file_threads, niced): uploaded files block by block
     (FileEmbedder via run_file_work), only while no live job is queued
  coordinator, as jobs finish: the session's ready tickets in order -> window embeddings,
     speaker change, Milestone events; SpeechProgress straight from the VAD pass
  events -> loop.call_soon_threadsafe(on_event, ...)

VAD, bookkeeping and encoding overlap on different cores. A session keeps only the
embeddings of its finished windows and the audio of the current window (plus windows
queued for the encoder), so its memory is bounded whatever the call length.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .audio import check_pcm, coerce_frame
from .calibration import Calibration, sigmoid
from .config import EngineConfig
from .encoders import Encoder, load_encoder
from .models import model_path
from .types import (SAMPLE_RATE, BandTargets, Channel, Embedding, EngineError,
                    EngineStats, Milestone, MilestoneKind, ModelInfo, Score, SessionEvent, SpeakerChange,
                    SpeechLimits, SpeechProgress)
from .vad import CHUNK, CHUNK_MS, SileroVad, VadStream

log = logging.getLogger("vbgw.engine")

ITER_CAP_S = 2.0            # audio per session taken by one worker iteration
FEED_EVERY_S = 0.1          # the worker's VAD cadence (a pass batches every stream's new audio)
ENCODER_QUEUE_CAP_S = 120.0 # audio queued for the encoder beyond which new audio waits
PROGRESS_EVERY_S = 0.2      # SpeechProgress rate limit (wall clock)
DELAY_S = 1.0               # a milestone computed later than this after its audio arrived is "delayed"
PARTIAL_QUANTUM = 800       # partial windows are cut to 100 ms multiples so they batch together
MIN_PARTIAL_S = 0.5         # a partial window shorter than this is left out when windows exist
_EMPTY = np.zeros(0, np.int16)
MAX_WINDOWS = 64            # finished windows kept per call before the oldest are folded (memory bound)
FILE_BLOCK_S = 5.0          # audio per unit of file work: its VAD and at most one window to embed


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("vbgw")
    except Exception:  # noqa: BLE001
        return "0.1.0"


# ----------------------------------------------------------------------------- state
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


# ----------------------------------------------------------------------------- core
class _Core:
    """Synchronous processing shared by the worker thread, embed_pcm and the benchmarks."""

    def __init__(self, cfg: EngineConfig, encoder: Encoder, vad: SileroVad, cal: Calibration):
        self.cfg = cfg
        self.encoder = encoder
        self.vad = vad
        self.cal = cal
        self.window_samples = int(round(cfg.window_s * SAMPLE_RATE)) // CHUNK * CHUNK
        self.audio_s = 0.0
        self.speech_s = 0.0
        self._stats_lock = threading.Lock()

    # -- encoder ---------------------------------------------------------------------
    def run_jobs(self, jobs: list[_Job]) -> None:
        """Embed jobs inline (batched over the encoder's threads): the synchronous path."""
        todo = [j for j in jobs if len(j.audio) >= self.encoder.min_samples]
        if todo:
            vecs = self.encoder.embed([j.audio for j in todo], max_batch=self.cfg.max_batch)
            for j, v in zip(todo, vecs):
                j.result = v
        for j in jobs:
            self.finish_job(j)

    def run_job(self, job: _Job) -> None:
        """Embed one job (a scheduler thread); thread-safe."""
        if len(job.audio) >= self.encoder.min_samples:
            job.result = self.encoder.embed_one(job.audio)
        self.finish_job(job)

    def finish_job(self, job: _Job) -> None:
        if job.result is not None:
            with self._stats_lock:                # encoder threads finish jobs concurrently
                self.speech_s += len(job.audio) / SAMPLE_RATE
        if job.window is not None:
            job.window.vector = job.result
        job.audio = _EMPTY                    # the audio is not needed any more
        job.done = True

    def combine(self, windows: list[_Window], partial: np.ndarray | None, partial_ms: int,
                total_ms: int) -> Embedding | None:
        vecs, ws = [], []
        for w in windows:
            if w.vector is not None:
                vecs.append(w.vector)
                ws.append(max(w.speech_ms, 1))
        if partial is not None and (not vecs or partial_ms >= MIN_PARTIAL_S * 1000):
            vecs.append(partial)
            ws.append(max(partial_ms, 1))
        if not vecs:
            return None
        v = np.average(np.stack(vecs), axis=0, weights=np.asarray(ws, np.float64))
        v = (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)
        return Embedding(vector=v, speech_ms=int(total_ms), model=self.encoder.model)

    def _speaker_change(self, st: _State, new: _Window) -> None:
        """Each window against the call's first window: with the first NORMAL cutting it,
        that is the speech the caller was first verified on. (A growing mean of all earlier
        windows let a window straddling the change contaminate the reference, so the new
        speaker's later windows no longer stood out.)"""
        if new.vector is None:
            return
        if st.scd_ref is None:
            st.scd_ref = new.vector
            return
        llr = float(self.cal.llr(float(st.scd_ref @ new.vector)))
        if st.min_scd is None or llr < st.min_scd:
            st.min_scd = llr
            nllr = llr / math.sqrt(max(new.speech_ms, 1) / 1000.0)
            st.change = SpeakerChange(user_changed=llr < self.cfg.scd_threshold,
                                      scd_llr=round(llr, 4), scd_nllr=round(nllr, 4))

    # -- VAD + windows ---------------------------------------------------------------
    def feed(self, states: list[_State], max_samples: int | None, now: float | None = None,
             milestones: bool = True) -> tuple[list[_Job], list[tuple[_State, SessionEvent]]]:
        """VAD over the pending audio of `states`; full windows and milestones become
        encoder jobs and in-order tickets on their states. Returns the new jobs and the
        events that need no encoder (SpeechProgress)."""
        now = time.monotonic() if now is None else now
        takes = [st.take(max_samples) for st in states]
        active = [(st, a, t) for st, (a, t) in zip(states, takes) if len(a)]
        if not active:
            return [], []
        results = self.vad.process_many([st.vad for st, _, _ in active],
                                        [a for _, a, _ in active])
        jobs: list[_Job] = []
        events: list[tuple[_State, SessionEvent]] = []

        def window_job(st: _State, w: _Window, wa: np.ndarray, urgent: bool) -> _Job:
            j = _Job(wa, window=w, urgent=urgent, state=st)
            jobs.append(j)
            st.tickets.append(_Ticket(job=j))
            return j

        for (st, audio, times), decisions in zip(active, results):
            st.audio_ms += len(audio) * 1000 // SAMPLE_RATE
            with self._stats_lock:                # the coordinator and file threads feed concurrently
                self.audio_s += len(audio) / SAMPLE_RATE
            grew = milestone = False
            for idx, pieces, is_speech in decisions:
                for piece in pieces:
                    for w, wa in st.speech.add(piece):
                        window_job(st, w, wa, urgent=False)
                        if milestones and st.refine_due():
                            # A refined NORMAL from the finished windows alone: no extra encoder work.
                            st.milestone_idx += 1
                            st.last_milestone_ms = st.speech.speech_ms
                            st.tickets.append(_Ticket(kind=MilestoneKind.NORMAL, windows=list(st.speech.windows),
                                                      speech_ms=st.speech.speech_ms,
                                                      arrived=float(times[idx])))
                if not is_speech:
                    continue
                st.speech.speech_ms += CHUNK_MS
                st.speech.buf_speech_ms += CHUNK_MS
                grew = True
                nxt = st.next_milestone() if milestones else None
                if nxt is None or st.speech.speech_ms < nxt[1]:
                    continue
                milestone = True
                st.milestone_idx += 1
                st.last_milestone_ms = st.speech.speech_ms
                arrived = float(times[idx])
                if nxt[0] == "NORMAL":
                    # The first NORMAL closes the current window early, so its audio is
                    # embedded once, as a window, instead of once as a partial and again
                    # inside a 10 s window (~30 % of a call's encoder work).
                    cut = st.speech.cut()
                    if cut is not None:
                        window_job(st, cut[0], cut[1], urgent=True)
                    st.tickets.append(_Ticket(kind=MilestoneKind.NORMAL, windows=list(st.speech.windows),
                                              speech_ms=st.speech.speech_ms, arrived=arrived))
                else:
                    part = st.speech.partial(PARTIAL_QUANTUM)
                    pj = _Job(part, urgent=True, state=st) if len(part) else None
                    if pj is not None:
                        jobs.append(pj)
                    st.tickets.append(_Ticket(kind=nxt[0], windows=list(st.speech.windows),
                                              partial=pj, partial_ms=st.speech.buf_speech_ms,
                                              speech_ms=st.speech.speech_ms, arrived=arrived))
            if grew and (milestone or now - st.last_progress_t >= PROGRESS_EVERY_S):
                st.last_progress_t = now
                st.last_progress_ms = st.speech.speech_ms
                events.append((st, SpeechProgress(st.dialog_id, st.speech.speech_ms)))
        return jobs, events

    def resolve(self, st: _State, now: float | None = None) -> list[tuple[_State, SessionEvent]]:
        """Results of `st`'s tickets whose jobs are done, in order (coordinator thread)."""
        events: list[tuple[_State, SessionEvent]] = []
        done = time.monotonic() if now is None else now
        while st.tickets and st.tickets[0].ready():
            t = st.tickets.popleft()
            if t.kind is None:
                w = t.job.window
                w.done = True
                self._speaker_change(st, w)
                continue
            if t.kind == "SETTLED":
                events.append((st, _Answer(t.callback, None)))
                continue
            emb = self.combine(t.windows, t.partial.result if t.partial is not None else None,
                               t.partial_ms, t.speech_ms)
            if t.kind == "SESSION":
                events.append((st, _Answer(t.callback, emb if t.speech_ms > 0 else None)))
                continue
            if emb is not None:
                events.append((st, Milestone(st.dialog_id, t.kind, emb, st.change,
                                             delayed=(done - t.arrived) > DELAY_S, arrived=t.arrived)))
        st.speech.fold()
        return events

    def process(self, states: list[_State], max_samples: int | None, now: float | None = None,
                milestones: bool = True) -> list[tuple[_State, SessionEvent]]:
        """feed + encoder inline + resolve: the synchronous path (embed_many for scripts
        and benchmarks, tests). Returns the events to deliver, in order."""
        jobs, events = self.feed(states, max_samples, now, milestones)
        self.run_jobs(jobs)
        for st in states:
            events += self.resolve(st)
        return events

    def session_ticket(self, st: _State, callback) -> _Job | None:
        """Queue the whole-session embedding of `st` (its windows so far plus the current
        partial window) as a ticket; returns the partial window's job, if any."""
        part = st.speech.partial()
        job = _Job(part, urgent=True, state=st) if len(part) else None
        st.tickets.append(_Ticket(kind="SESSION", windows=list(st.speech.windows), partial=job,
                                  partial_ms=st.speech.buf_speech_ms, speech_ms=st.speech.speech_ms,
                                  callback=callback))
        return job

    def file_state(self, pcm: np.ndarray) -> _State:
        """A session holding a whole file as pending audio (one-shot embedding)."""
        st = _State("", SpeechLimits(), None, self.window_samples)
        st.pending.append((0.0, np.asarray(pcm, np.int16)))
        st.pending_samples = len(pcm)
        return st

    def embed_many(self, pcms: list[np.ndarray]) -> list[Embedding | None]:
        """Whole files (int16 8 kHz) through the session path, batched across files."""
        states = [self.file_state(p) for p in pcms]
        out: list[Embedding | None] = [None] * len(states)
        # the < 256-sample tail is not a whole VAD chunk: ignored, as in a live session
        jobs, _ = self.feed(states, None, milestones=False)
        for i, st in enumerate(states):
            part = self.session_ticket(st, lambda emb, i=i: out.__setitem__(i, emb))
            if part is not None:
                jobs.append(part)
        self.run_jobs(jobs)
        for st in states:
            for _, ev in self.resolve(st):
                if isinstance(ev, _Answer):
                    ev.callback(ev.value)
        return out


# ----------------------------------------------------------------------------- scheduler
@dataclass(eq=False)
class _FileTask:
    """A unit of file work (an uploaded file's next block: decoding, VAD, its windows'
    embeddings, fingerprint): `fn()` runs on a file thread, `done(result, exc)` follows."""
    fn: Callable[[], object]
    done: Callable[[object, BaseException | None], None]


class _Scheduler:
    """Runs encoder jobs on `threads` threads of their own, urgent (milestone) jobs first;
    file work (uploaded files: batch enrolment, blocklist and Aculab uploads) on
    `file_threads` threads of its own, last.

    The engine worker (the coordinator) only queues jobs and collects finished ones, so
    the VAD of new audio, the window bookkeeping and the encoder run at the same time on
    different cores (ONNX Runtime releases the GIL) instead of one after the other.

    Live calls come first, in three ways: the order (urgent live jobs, then background live
    jobs, then file work: a file thread takes file work only while no live job is queued),
    the bound on file work (at most `file_threads` files' blocks run at once, never on a
    live thread, so a live job never waits behind a file), and the CPU (file threads run at
    `file_nice` on Linux, so under load the OS hands the cores to live work first)."""

    def __init__(self, core: "_Core", threads: int, on_done: Callable[[], None],
                 file_threads: int = 1, file_nice: int = 10):
        self._core = core
        self._on_done = on_done
        self._cv = threading.Condition()
        self._urgent: deque[_Job] = deque()
        self._background: deque[_Job] = deque()
        self._files: deque[_FileTask] = deque()
        self._running = 0
        self.file_running = 0
        self._stop = False
        self.queued_samples = 0
        self._file_nice = file_nice
        self.finished: deque[_Job] = deque()      # appended by encoder threads, drained by the coordinator
        self._threads = [threading.Thread(target=self._loop, name=f"vbgw-encoder-{i}", daemon=True)
                         for i in range(max(1, threads))]
        self._threads += [threading.Thread(target=self._file_loop, name=f"vbgw-files-{i}", daemon=True)
                          for i in range(max(1, file_threads))]
        for t in self._threads:
            t.start()

    def submit(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        with self._cv:
            for j in jobs:
                (self._urgent if j.urgent else self._background).append(j)
                self.queued_samples += len(j.audio)
            self._cv.notify_all()

    def submit_file(self, task: _FileTask) -> None:
        with self._cv:
            if self._stop:
                raise EngineError("engine stopped")
            self._files.append(task)
            self._cv.notify_all()

    @property
    def files_queued(self) -> int:
        return len(self._files)

    def promote(self, states: set[int]) -> None:
        """Queued jobs of these states (ids) jump the queue: a milestone waits for them."""
        with self._cv:
            rest: deque[_Job] = deque()
            for j in self._background:
                if id(j.state) in states:
                    j.urgent = True
                    self._urgent.append(j)
                else:
                    rest.append(j)
            self._background = rest

    def idle(self) -> bool:
        with self._cv:
            return not (self._urgent or self._background or self._running or self._files or self.file_running)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            dropped, self._files = list(self._files), deque()
            self._cv.notify_all()
        for task in dropped:
            task.done(None, EngineError("engine stopped"))
        for t in self._threads:
            t.join(5.0)

    # -- the order (called with self._cv held) ---------------------------------------
    def _next_live(self) -> _Job | None:
        if self._urgent:
            return self._urgent.popleft()
        if self._background:
            return self._background.popleft()
        return None

    def _next_file(self) -> _FileTask | None:
        if self._urgent or self._background or not self._files:
            return None                  # live work first, whatever is waiting
        return self._files.popleft()

    # -- threads ---------------------------------------------------------------------
    def _wait_for(self, take: Callable):
        """With the lock held: the next item `take()` gives, waiting for one; None on stop."""
        while not self._stop and (item := take()) is None:
            self._cv.wait()
        return None if self._stop else item

    def _loop(self) -> None:
        while True:
            with self._cv:
                job = self._wait_for(self._next_live)
                if job is None:
                    return
                self.queued_samples -= len(job.audio)
                self._running += 1
                if self._files and not (self._urgent or self._background):
                    self._cv.notify_all()           # the live queues drained: file work may go
            try:
                self._core.run_job(job)
            except Exception:  # noqa: BLE001 - a failed job yields no embedding, never a dead thread
                log.exception("encoder job failed")
                job.result = None
                self._core.finish_job(job)
            finally:
                with self._cv:
                    self._running -= 1
                self.finished.append(job)
                self._on_done()

    def _file_loop(self) -> None:
        _lower_thread_priority(self._file_nice)
        while True:
            with self._cv:
                task = self._wait_for(self._next_file)
                if task is None:
                    return
                self.file_running += 1
            try:
                res, exc = task.fn(), None
            except Exception as e:  # noqa: BLE001 - reported to the waiting caller
                res, exc = None, e
            finally:
                with self._cv:
                    self.file_running -= 1
            try:
                task.done(res, exc)
            except Exception:  # noqa: BLE001
                log.exception("file work callback failed")


def _lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value (Linux: nice is per thread; elsewhere
    PRIO_PROCESS would name a process, so nothing is done)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        log.warning("could not lower the file threads' priority")


# ----------------------------------------------------------------------------- public
class FileEmbedder:
    """The embedding of one uploaded file, built block by block so that a file of any
    length needs only its current block and window in memory (a whole file's int16 array,
    its VAD input and per-sample arrival times were several times its size).

    `add()` and `result()` run on a file thread (Engine.run_file_work), one at a time; the
    embedding equals the one-shot path's (Engine.embed_many_sync): the VAD is stateful and
    cut on the same 256-sample chunks, and windows are cut from the same speech."""

    def __init__(self, core: _Core):
        self._core = core
        self._st = _State("", SpeechLimits(), None, core.window_samples)

    def add(self, pcm: np.ndarray) -> None:
        """VAD over `pcm` (int16 8 kHz) and embed the windows it fills, on this thread."""
        pcm = check_pcm(pcm)
        if not len(pcm):
            return
        st = self._st
        st.pending.append((0.0, pcm))
        st.pending_samples += len(pcm)
        jobs, _ = self._core.feed([st], None, milestones=False)
        for job in jobs:
            self._core.run_job(job)
        self._core.resolve(st)               # window tickets only: no events to deliver

    def result(self) -> Embedding | None:
        """The file's embedding (its windows and the last partial window); None without
        speech. The < 256-sample tail is ignored, as in a live session."""
        out: list[Embedding | None] = []
        job = self._core.session_ticket(self._st, out.append)
        if job is not None:
            self._core.run_job(job)
        for _, ev in self._core.resolve(self._st):
            if isinstance(ev, _Answer):
                ev.callback(ev.value)
        return out[0] if out else None

    def memory_bytes(self) -> int:
        return self._st.memory_bytes()


class EngineSession:
    """One dialog. push() from the event loop; results arrive through on_event."""

    def __init__(self, engine: "Engine", state: _State):
        self._engine = engine
        self._st = state
        self.dialog_id = state.dialog_id

    @property
    def speech_ms(self) -> int:
        return self._st.speech.speech_ms

    @property
    def speaker_change(self) -> SpeakerChange:
        return self._st.change

    @property
    def pending_s(self) -> float:
        """Audio pushed but not yet through the VAD, in seconds (for connector backpressure)."""
        return self._st.pending_samples / SAMPLE_RATE

    def set_limits(self, limits: SpeechLimits) -> None:
        """The speech milestones of the dialog's profile, when it becomes known only after the
        audio started (an AudioHook call claimed by its first session). One attribute swap:
        the coordinator reads the limits afresh at each milestone."""
        self._st.limits = limits

    def push(self, channel: Channel, pcm: np.ndarray) -> None:
        """Queue int16 8 kHz audio. Cheap and never raises."""
        try:
            st = self._st
            if st.closed:
                return
            a = coerce_frame(pcm)
            if not len(a):
                return
            if channel != "customer":
                # agent audio is never embedded into the customer voice
                st.agent_ms += len(a) * 1000 // SAMPLE_RATE
                return
            self._engine._enqueue(st, a)
        except Exception:  # noqa: BLE001 - push must never raise into the gateway
            log.exception("push failed for dialog %s", self.dialog_id)

    async def embedding(self) -> Embedding | None:
        """The whole session so far (pending audio included)."""
        return await self._engine._settled(self._st, "SESSION")

    async def flush(self) -> None:
        """Process all pending audio (VAD, finished windows, milestones) without embedding
        the partial window: cheap, for draining a call at its end."""
        if not self._st.closed:
            await self._engine._settled(self._st, "FLUSH")

    async def close(self) -> None:
        if self._st.closed:
            return
        await self._engine._settled(self._st, "CLOSE")

    def memory_bytes(self) -> int:
        return self._st.memory_bytes()


class Engine:
    def __init__(self, cfg: EngineConfig, core: _Core, info: ModelInfo):
        self.cfg = cfg
        self._core = core
        self.info = info
        self.ready = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._states: dict[int, _State] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._calls: deque = deque()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._overloaded = False
        self._dropped_ms = 0
        self._last_error: str | None = None
        self._sched: _Scheduler | None = None
        self._answers: set = set()        # _settled() callers still waiting (failed on stop)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def load(cls, cfg: EngineConfig | None = None) -> "Engine":
        cfg = cfg or EngineConfig()
        import scipy.signal  # noqa: F401  (load scipy's OpenBLAS before capping it)
        _limit_threads(1)
        encoder = load_encoder(cfg.encoder, cfg.model_dir, runtime=cfg.runtime, threads=cfg.threads,
                               cache_dir=cfg.cache_dir)
        vad = SileroVad(model_path(cfg.model_dir, "silero_vad"), threads=1,
                        threshold=cfg.vad_threshold, pad_chunks=cfg.vad_pad_ms // CHUNK_MS)
        cal = Calibration.load(cfg.encoder)
        info = ModelInfo(model=encoder.model, extractor_version=encoder.extractor_version,
                         method="cosine+linear-calibration", plda_version=cal.id,
                         sw_version=_version(), dim=encoder.dim)
        return cls(cfg, _Core(cfg, encoder, vad, cal), info)

    @property
    def calibration(self) -> Calibration:
        return self._core.cal

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop = False
        self._sched = _Scheduler(self._core, self.cfg.threads, self._wake.set,
                                 file_threads=self.cfg.file_threads, file_nice=self.cfg.file_nice)
        self._thread = threading.Thread(target=self._run, name="vbgw-engine", daemon=True)
        self._thread.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self._stop = True
        self._wake.set()
        t, self._thread = self._thread, None
        if t is not None:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10.0)
        sched, self._sched = self._sched, None
        if sched is not None:
            await asyncio.get_running_loop().run_in_executor(None, sched.stop)
        for answer in list(self._answers):
            answer(None, EngineError("engine stopped"))

    # -- sessions --------------------------------------------------------------------
    def open_session(self, dialog_id: str, limits: SpeechLimits,
                     on_event: Callable[[SessionEvent], None]) -> EngineSession:
        st = _State(dialog_id, limits, on_event, self._core.window_samples)
        with self._lock:
            self._states[id(st)] = st
        return EngineSession(self, st)

    def _enqueue(self, st: _State, a: np.ndarray) -> None:
        cap = int(self.cfg.max_pending_s * SAMPLE_RATE)
        with st.lock:
            st.pending.append((time.monotonic(), a))
            st.pending_samples += len(a)
            while st.pending_samples > cap and len(st.pending) > 1:
                _, old = st.pending.popleft()
                st.pending_samples -= len(old)
                st.dropped_ms += len(old) * 1000 // SAMPLE_RATE
                self._dropped_ms += len(old) * 1000 // SAMPLE_RATE
                self._overloaded = True

    # -- one-shot --------------------------------------------------------------------
    async def embed_pcm(self, pcm: np.ndarray) -> Embedding | None:
        """Embed a whole file (int16 mono 8 kHz) as file work (see run_file_work), in
        blocks of FILE_BLOCK_S. None when there is no speech."""
        pcm = check_pcm(pcm)
        if not len(pcm):
            return None
        fe = self.file_embedder()
        step = int(FILE_BLOCK_S * SAMPLE_RATE)
        for i in range(0, len(pcm), step):
            await self.run_file_work(lambda block=pcm[i:i + step]: fe.add(block))
        return await self.run_file_work(fe.result)

    def file_embedder(self) -> FileEmbedder:
        """A streaming whole-file embedder; call its methods through run_file_work."""
        return FileEmbedder(self._core)

    async def run_file_work(self, fn: Callable[[], object]):
        """Run `fn()` on a file thread and return its result: work for uploaded files,
        which live calls always come before (see _Scheduler). Keep each call to a block of
        a file (FILE_BLOCK_S), so several uploads take turns."""
        sched = self._sched
        if sched is None:
            raise EngineError("engine not started")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(res, exc):
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(res)

        sched.submit_file(_FileTask(fn, lambda res, exc: loop.call_soon_threadsafe(settle, res, exc)))
        return await fut

    def embed_many_sync(self, pcms: list[np.ndarray]) -> list[Embedding | None]:
        """Batch form of embed_pcm for scripts (calibration, benchmarks); not thread-safe
        with a running worker."""
        return self._core.embed_many([check_pcm(p) for p in pcms])

    # -- passphrases (engine.passphrase; text-dependent verification) ---------------
    def vad_speech(self, pcm: np.ndarray) -> np.ndarray:
        """Speech flags per 32 ms chunk of a whole file (the session VAD's model, a fresh
        stream: safe beside running sessions)."""
        from .passphrase import vad_speech
        return vad_speech(self._core.vad, check_pcm(pcm))

    def phrase_features(self, pcm: np.ndarray) -> np.ndarray | None:
        """A passphrase utterance's speech-frame features (engine.passphrase.phrase_features,
        speech picked by the VAD); None when it has too little speech. CPU-bound: run it off
        the event loop."""
        from .passphrase import phrase_features
        return phrase_features(pcm, self.vad_speech(pcm))

    # -- scoring ---------------------------------------------------------------------
    def score(self, embedding: Embedding, voiceprint: np.ndarray) -> Score:
        vp = np.asarray(voiceprint, dtype=np.float32).reshape(-1)
        if vp.shape[0] != embedding.vector.shape[0]:
            raise EngineError(f"voiceprint has dim {vp.shape[0]}, model {self.info.model} "
                              f"has {embedding.vector.shape[0]}")
        n = float(np.linalg.norm(vp))
        if not math.isfinite(n) or n == 0:
            raise EngineError("voiceprint is zero or not finite")
        cos = float(np.clip(embedding.vector @ vp / n, -1.0, 1.0))
        llr = float(self._core.cal.llr(cos))
        secs = max(embedding.speech_ms, 1) / 1000.0
        return Score(cosine=cos, llr=llr, llr_norm=llr / math.sqrt(secs), bio_score=sigmoid(llr))

    def classify(self, llr: float, targets: BandTargets) -> str:
        return self._core.cal.classify(llr, targets)

    def thresholds(self, targets: BandTargets) -> dict[str, float]:
        return self._core.cal.thresholds(targets)

    def merge(self, voiceprint: np.ndarray, voiceprint_speech_ms: int, new: Embedding) -> Embedding:
        vp = np.asarray(voiceprint, dtype=np.float64).reshape(-1)
        vp = vp / max(np.linalg.norm(vp), 1e-12)
        a, b = max(int(voiceprint_speech_ms), 0), max(int(new.speech_ms), 0)
        if a + b == 0:
            a = b = 1
        v = (vp * a + new.vector.astype(np.float64) * b) / (a + b)
        v = (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)
        return Embedding(vector=v, speech_ms=int(voiceprint_speech_ms) + int(new.speech_ms),
                         model=new.model)

    def stats(self) -> EngineStats:
        with self._lock:
            states = list(self._states.values())
        encoder_queue = self._sched.queued_samples if self._sched is not None else 0
        depth = sum(st.pending_samples for st in states) + encoder_queue
        backlog_s = depth / SAMPLE_RATE
        overloaded = backlog_s > self.cfg.max_backlog_s or self._overloaded
        return EngineStats(sessions=len(states), queue_depth=depth,
                           audio_seconds=round(self._core.audio_s, 3),
                           speech_seconds=round(self._core.speech_s, 3),
                           overloaded=overloaded,
                           extra={"backlog_s": round(backlog_s, 3),
                                  "dropped_audio_s": self._dropped_ms / 1000.0,
                                  "encoder_queue_s": round(encoder_queue / SAMPLE_RATE, 3),
                                  "file_work_queued": self._sched.files_queued if self._sched is not None else 0,
                                  "encoder": self.info.extractor_version,
                                  "last_error": self._last_error})

    # -- worker ----------------------------------------------------------------------
    async def _settled(self, st: _State, what: str):
        """Feed `st`'s pending audio, then answer once all its work so far has resolved,
        without holding up the worker meanwhile (its other calls keep flowing):
        FLUSH -> None (and a trailing SpeechProgress), SESSION -> the session embedding,
        CLOSE -> None (the session is closed). (Whole files are file work: embed_pcm.)"""
        if self._thread is None:
            raise EngineError("engine not started")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def answer(res, exc=None):
            self._answers.discard(answer)
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(res)

        def reply(res, exc=None):                      # coordinator thread -> event loop
            loop.call_soon_threadsafe(answer, res, exc)

        def start():                                   # coordinator thread
            try:
                self._feed([st], None)
                if what == "SESSION":
                    job = self._core.session_ticket(st, reply)
                    if job is not None:
                        self._sched.submit([job])
                else:
                    def settled(_):
                        try:
                            if what == "CLOSE":
                                self._close_state(st)
                            else:
                                self._emit(self._trailing_progress(st))
                            reply(None)
                        except Exception as e:  # noqa: BLE001
                            reply(None, e)
                    st.tickets.append(_Ticket(kind="SETTLED", callback=settled))
                self._sched.promote({id(st)})
                self._emit(self._core.resolve(st))
            except Exception as e:  # noqa: BLE001
                reply(None, e)

        self._answers.add(answer)
        self._calls.append((start, (), loop, lambda res, exc: exc is not None and answer(None, exc)))
        self._wake.set()
        return await fut

    @staticmethod
    def _trailing_progress(st: _State) -> list[tuple[_State, SessionEvent]]:
        """SpeechProgress is rate-limited (PROGRESS_EVERY_S); a flush publishes the last value
        that the limit held back, so listeners end with the session's true speech total."""
        if st.speech.speech_ms > st.last_progress_ms:
            st.last_progress_ms = st.speech.speech_ms
            st.last_progress_t = time.monotonic()
            return [(st, SpeechProgress(st.dialog_id, st.speech.speech_ms))]
        return []

    def _close_state(self, st: _State) -> None:
        st.closed = True
        st.tickets.clear()
        with self._lock:
            self._states.pop(id(st), None)
        with st.lock:
            st.pending.clear()
            st.pending_samples = 0
        done = _Speech(1)                 # free the audio, keep the counters
        done.speech_ms = st.speech.speech_ms
        st.speech = done

    def _emit(self, events: list[tuple[_State, SessionEvent]]) -> None:
        loop = self._loop
        for st, ev in events:
            if isinstance(ev, _Answer):
                ev.callback(ev.value)
                continue
            if loop is not None and st.on_event is not None:
                loop.call_soon_threadsafe(self._deliver, st, ev)

    @staticmethod
    def _deliver(st: _State, ev: SessionEvent) -> None:
        if st.closed:
            return
        try:
            st.on_event(ev)
        except Exception:  # noqa: BLE001
            log.exception("on_event callback failed for dialog %s", st.dialog_id)

    def _feed(self, states: list[_State], max_samples: int | None) -> None:
        jobs, events = self._core.feed(states, max_samples)
        self._emit(events)
        self._sched.submit(jobs)
        urgent = {id(j.state) for j in jobs if j.urgent}
        if urgent:
            self._sched.promote(urgent)
        for st in states:
            if st.tickets and st.tickets[0].ready():
                self._emit(self._core.resolve(st))    # e.g. a refined NORMAL of done windows

    def _collect(self) -> None:
        """Resolve the states whose encoder jobs finished."""
        fin = self._sched.finished
        touched: dict[int, _State] = {}
        while fin:
            j = fin.popleft()
            if j.state is not None:
                touched[id(j.state)] = j.state
        for st in touched.values():
            self._emit(self._core.resolve(st))

    def _run(self) -> None:
        cap = int(ITER_CAP_S * SAMPLE_RATE)
        queue_cap = int(ENCODER_QUEUE_CAP_S * SAMPLE_RATE)
        next_feed = 0.0
        while not self._stop:
            self._wake.wait(max(0.0, next_feed - time.monotonic()))
            self._wake.clear()
            try:
                while self._calls:
                    fn, args, loop, done = self._calls.popleft()
                    try:
                        res, exc = fn(*args), None
                    except Exception as e:  # noqa: BLE001
                        res, exc = None, e
                    loop.call_soon_threadsafe(done, res, exc)
                self._collect()
                now = time.monotonic()
                if now < next_feed:
                    continue
                # VAD runs on a fixed cadence rather than per pushed frame, so that each
                # pass batches many streams; beyond the queue cap the encoder is behind
                # and new audio waits (the connectors' backpressure takes over).
                next_feed = now + FEED_EVERY_S
                with self._lock:
                    states = [s for s in self._states.values() if s.pending_samples >= CHUNK]
                backlog = (sum(s.pending_samples for s in states) + self._sched.queued_samples) / SAMPLE_RATE
                self._overloaded = backlog > self.cfg.max_backlog_s
                if states and self._sched.queued_samples < queue_cap:
                    self._feed(states, cap)
            except Exception as e:  # noqa: BLE001 - keep the worker alive
                self._last_error = f"{type(e).__name__}: {e}"
                log.exception("engine worker iteration failed")
        # fail pending calls on stop
        while self._calls:
            fn, args, loop, done = self._calls.popleft()
            loop.call_soon_threadsafe(done, None, EngineError("engine stopped"))


def _limit_threads(n: int) -> None:
    """Cap the OpenBLAS threads of numpy/scipy (used for the fbank and small matmuls).

    Idle OpenBLAS threads busy-wait after each call and would steal the cores the encoder
    and the VAD run on. Like threadpoolctl (not a dependency), this calls
    `*openblas_set_num_threads*` in every OpenBLAS library loaded in the process."""
    import ctypes
    import re
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", fh.read())))
    except OSError:
        return
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(h, sym, None)
            if fn is not None:
                try:
                    fn(ctypes.c_int(max(1, int(n))))
                except Exception:  # noqa: BLE001
                    pass
                break
