"""The synchronous pipeline: what happens to a session's audio, one step at a time.

`feed` runs the VAD over sessions' pending audio (batched across sessions), fills windows and
turns full windows and milestones into encoder jobs and in-order tickets; `resolve` turns a
session's tickets whose jobs are done into results, in order (window embeddings, speaker
change, Milestone events, answers to waiting callers); `combine` is the speech-weighted mean
of windows (and a partial window) that every milestone and session embedding is.

Nothing here owns a thread: the coordinator (engine/coordinator.py) calls `feed` and `resolve`
and hands the jobs to the scheduler; the file path (FileEmbedder) and scripts (`process`,
`embed_many`) run the jobs inline. The figures in docs/scoring.md are this code's.
"""
from __future__ import annotations

import functools
import math
import threading
import time
from typing import Callable

import numpy as np

from .calibration import Calibration
from .config import EngineConfig
from .encoders import Encoder
from .state import Answer, EncoderJob, Outcome, SessionState, Ticket, TicketKind, Window
from .types import (SAMPLE_RATE, Embedding, Milestone, MilestoneKind, SpeakerChange, SpeechLimits,
                    SpeechProgress)
from .vad import CHUNK, CHUNK_MS, SileroVad

PROGRESS_EVERY_S = 0.2      # SpeechProgress rate limit (wall clock)
DELAY_S = 1.0               # a milestone computed later than this after its audio arrived is "delayed"
PARTIAL_QUANTUM = 800       # partial windows are cut to 100 ms multiples so they batch together
MIN_PARTIAL_S = 0.5         # a partial window shorter than this is left out when windows exist
_EMPTY = np.zeros(0, np.int16)


class Pipeline:
    """Synchronous processing shared by the coordinator, the file threads and scripts. One per
    engine: the encoder, the VAD model, the calibration and the engine-wide audio counters."""

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
    def run_jobs(self, jobs: list[EncoderJob]) -> None:
        """Embed jobs inline (batched over the encoder's threads): the synchronous path."""
        todo = [j for j in jobs if len(j.audio) >= self.encoder.min_samples]
        if todo:
            vecs = self.encoder.embed([j.audio for j in todo], max_batch=self.cfg.max_batch)
            for j, v in zip(todo, vecs):
                j.result = v
        for j in jobs:
            self.finish_job(j)

    def run_job(self, job: EncoderJob) -> None:
        """Embed one job (a scheduler thread); thread-safe."""
        if len(job.audio) >= self.encoder.min_samples:
            job.result = self.encoder.embed_one(job.audio)
        self.finish_job(job)

    def finish_job(self, job: EncoderJob) -> None:
        if job.result is not None:
            with self._stats_lock:                # encoder threads finish jobs concurrently
                self.speech_s += len(job.audio) / SAMPLE_RATE
        if job.window is not None:
            job.window.vector = job.result
        job.audio = _EMPTY                    # the audio is not needed any more
        job.done = True

    def combine(self, windows: list[Window], partial: np.ndarray | None, partial_ms: int,
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

    def _speaker_change(self, st: SessionState, new: Window) -> None:
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
    def feed(self, states: list[SessionState], max_samples: int | None, now: float | None = None,
             milestones: bool = True) -> tuple[list[EncoderJob], list[Outcome]]:
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
        jobs: list[EncoderJob] = []
        events: list[Outcome] = []

        def window_job(st: SessionState, w: Window, wa: np.ndarray, urgent: bool) -> EncoderJob:
            j = EncoderJob(wa, window=w, urgent=urgent, state=st)
            jobs.append(j)
            st.tickets.append(Ticket(TicketKind.WINDOW, job=j))
            return j

        def milestone_ticket(st: SessionState, kind: MilestoneKind, arrived: float,
                             partial: EncoderJob | None = None, partial_ms: int = 0) -> None:
            st.milestone_idx += 1
            st.last_milestone_ms = st.speech.speech_ms
            st.tickets.append(Ticket(TicketKind.MILESTONE, milestone=kind, windows=list(st.speech.windows),
                                     partial=partial, partial_ms=partial_ms,
                                     speech_ms=st.speech.speech_ms, arrived=arrived))

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
                            milestone_ticket(st, MilestoneKind.NORMAL, float(times[idx]))
                if not is_speech:
                    continue
                st.speech.speech_ms += CHUNK_MS
                st.speech.buf_speech_ms += CHUNK_MS
                grew = True
                nxt = st.next_milestone() if milestones else None
                if nxt is None or st.speech.speech_ms < nxt[1]:
                    continue
                milestone = True
                kind, arrived = nxt[0], float(times[idx])
                if kind == MilestoneKind.NORMAL:
                    # The first NORMAL closes the current window early, so its audio is
                    # embedded once, as a window, instead of once as a partial and again
                    # inside a 10 s window (~30 % of a call's encoder work).
                    cut = st.speech.cut()
                    if cut is not None:
                        window_job(st, cut[0], cut[1], urgent=True)
                    milestone_ticket(st, kind, arrived)
                else:
                    part = st.speech.partial(PARTIAL_QUANTUM)
                    pj = EncoderJob(part, urgent=True, state=st) if len(part) else None
                    if pj is not None:
                        jobs.append(pj)
                    milestone_ticket(st, kind, arrived, partial=pj, partial_ms=st.speech.buf_speech_ms)
            if grew and (milestone or now - st.last_progress_t >= PROGRESS_EVERY_S):
                st.last_progress_t = now
                st.last_progress_ms = st.speech.speech_ms
                events.append((st, SpeechProgress(st.dialog_id, st.speech.speech_ms)))
        return jobs, events

    def resolve(self, st: SessionState, now: float | None = None) -> list[Outcome]:
        """Results of `st`'s tickets whose jobs are done, in order (coordinator thread)."""
        events: list[Outcome] = []
        done = time.monotonic() if now is None else now
        while st.tickets and st.tickets[0].ready():
            t = st.tickets.popleft()
            if t.kind is TicketKind.WINDOW:
                assert t.job is not None and t.job.window is not None
                w = t.job.window
                w.done = True
                self._speaker_change(st, w)
                continue
            if t.kind is TicketKind.SETTLED:
                assert t.callback is not None
                events.append((st, Answer(t.callback, None)))
                continue
            emb = self.combine(t.windows or [], t.partial.result if t.partial is not None else None,
                               t.partial_ms, t.speech_ms)
            if t.kind is TicketKind.SESSION:
                assert t.callback is not None
                events.append((st, Answer(t.callback, emb if t.speech_ms > 0 else None)))
                continue
            assert t.milestone is not None
            if emb is not None:
                events.append((st, Milestone(st.dialog_id, t.milestone, emb, st.change,
                                             delayed=(done - t.arrived) > DELAY_S, arrived=t.arrived)))
        st.speech.fold()
        return events

    def process(self, states: list[SessionState], max_samples: int | None, now: float | None = None,
                milestones: bool = True) -> list[Outcome]:
        """feed + encoder inline + resolve: the synchronous path (embed_many for scripts
        and benchmarks, tests). Returns the events to deliver, in order."""
        jobs, events = self.feed(states, max_samples, now, milestones)
        self.run_jobs(jobs)
        for st in states:
            events += self.resolve(st)
        return events

    def session_ticket(self, st: SessionState,
                       callback: Callable[[Embedding | None], None]) -> EncoderJob | None:
        """Queue the whole-session embedding of `st` (its windows so far plus the current
        partial window) as a ticket; returns the partial window's job, if any."""
        part = st.speech.partial()
        job = EncoderJob(part, urgent=True, state=st) if len(part) else None
        st.tickets.append(Ticket(TicketKind.SESSION, windows=list(st.speech.windows), partial=job,
                                 partial_ms=st.speech.buf_speech_ms, speech_ms=st.speech.speech_ms,
                                 callback=callback))
        return job

    def file_state(self, pcm: np.ndarray) -> SessionState:
        """A session holding a whole file as pending audio (one-shot embedding)."""
        st = SessionState("", SpeechLimits(), None, self.window_samples)
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
            part = self.session_ticket(st, functools.partial(out.__setitem__, i))
            if part is not None:
                jobs.append(part)
        self.run_jobs(jobs)
        for st in states:
            for _, ev in self.resolve(st):
                if isinstance(ev, Answer):
                    ev.callback(ev.value)
        return out

