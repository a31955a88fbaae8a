"""The coordinator: the engine's worker thread ("vbgw-engine") over its live sessions.

Every FEED_EVERY_S it takes the sessions' pending audio through the pipeline's VAD pass (one
pass batches every session), hands the encoder jobs to the scheduler, and as jobs finish
resolves the sessions' tickets in order; the events go to the event loop
(`loop.call_soon_threadsafe`). Callers waiting on a session (flush, embedding, close: `Settle`)
are answered from the same thread, after the events their audio produced.

The pipeline (engine/pipeline.py) is the what; this module is the when and on which thread.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from .config import EngineConfig
from .pipeline import Pipeline
from .scheduler import EncoderScheduler
from .state import Answer, Outcome, SessionSpeech, SessionState, Ticket, TicketKind
from .types import SAMPLE_RATE, Embedding, EngineError, SpeechProgress
from .vad import CHUNK

log = logging.getLogger("vbgw.engine")

ITER_CAP_S = 2.0            # audio per session taken by one worker iteration
FEED_EVERY_S = 0.1          # the worker's VAD cadence (a pass batches every stream's new audio)
ENCODER_QUEUE_CAP_S = 120.0 # audio queued for the encoder beyond which new audio waits

# An answer to a caller waiting on the coordinator: (result, exception), from any thread.
Reply = Callable[[Any, BaseException | None], None]


class Settle(enum.Enum):
    """What a caller waiting on a session gets once its pending audio has gone through and all
    work so far has resolved (EngineSession.flush / embedding / close)."""
    FLUSH = "flush"        # None, after a trailing SpeechProgress (see trailing_progress)
    SESSION = "session"    # the session embedding so far (None without speech)
    CLOSE = "close"        # None; the session is closed and its audio freed


class Coordinator:
    """Owns the live sessions and the worker thread; see the module docstring. The event loop
    calls add/enqueue/settle; everything else runs on the worker thread."""

    def __init__(self, cfg: EngineConfig, pipeline: Pipeline):
        self.cfg = cfg
        self.pipeline = pipeline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sched: EncoderScheduler | None = None
        self._states: dict[int, SessionState] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._calls: deque[tuple[Callable[[], None], asyncio.AbstractEventLoop, Reply]] = deque()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.overloaded = False
        self.dropped_ms = 0
        self.last_error: str | None = None
        self._answers: set[Reply] = set()      # settle() callers still waiting (failed on stop)

    # -- life ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None

    def wake(self) -> None:
        """Something finished (the scheduler's hook): collect it now."""
        self._wake.set()

    def start(self, loop: asyncio.AbstractEventLoop, sched: EncoderScheduler) -> None:
        self._loop = loop
        self._sched = sched
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="vbgw-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the worker thread; callers still waiting are failed by fail_waiting()."""
        self._stop = True
        self._wake.set()
        t, self._thread = self._thread, None
        if t is not None:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10.0)

    def fail_waiting(self) -> None:
        for answer in list(self._answers):
            answer(None, EngineError("engine stopped"))

    # -- sessions (event loop) -------------------------------------------------------
    def add(self, st: SessionState) -> None:
        with self._lock:
            self._states[id(st)] = st

    def states(self) -> list[SessionState]:
        with self._lock:
            return list(self._states.values())

    def enqueue(self, st: SessionState, a: np.ndarray) -> None:
        """Queue pushed audio; beyond cfg.max_pending_s the oldest is dropped (and counted)."""
        cap = int(self.cfg.max_pending_s * SAMPLE_RATE)
        with st.lock:
            st.pending.append((time.monotonic(), a))
            st.pending_samples += len(a)
            while st.pending_samples > cap and len(st.pending) > 1:
                _, old = st.pending.popleft()
                st.pending_samples -= len(old)
                st.dropped_ms += len(old) * 1000 // SAMPLE_RATE
                self.dropped_ms += len(old) * 1000 // SAMPLE_RATE
                self.overloaded = True

    async def settle(self, st: SessionState, what: Settle) -> Embedding | None:
        """Feed `st`'s pending audio, then answer once all its work so far has resolved (see
        Settle), without holding up the worker meanwhile (its other calls keep flowing).
        (Whole files are file work: Engine.embed_pcm.)"""
        sched = self._sched
        if self._thread is None or sched is None:
            raise EngineError("engine not started")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Embedding | None] = loop.create_future()

        def answer(res: Any, exc: BaseException | None = None) -> None:
            self._answers.discard(answer)
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(res)

        def reply(res: Any, exc: BaseException | None = None) -> None:   # worker -> event loop
            loop.call_soon_threadsafe(answer, res, exc)

        def start() -> None:                                              # worker thread
            try:
                self._feed([st], None)
                if what is Settle.SESSION:
                    job = self.pipeline.session_ticket(st, reply)
                    if job is not None:
                        sched.submit([job])
                else:
                    def settled(_: Embedding | None) -> None:
                        try:
                            if what is Settle.CLOSE:
                                self._close_state(st)
                            else:
                                self._emit(self._trailing_progress(st))
                            reply(None)
                        except Exception as e:  # noqa: BLE001
                            reply(None, e)
                    st.tickets.append(Ticket(TicketKind.SETTLED, callback=settled))
                sched.promote({id(st)})
                self._emit(self.pipeline.resolve(st))
            except Exception as e:  # noqa: BLE001
                reply(None, e)

        def failed(_res: Any, exc: BaseException | None) -> None:        # start() itself raised
            if exc is not None:
                answer(None, exc)

        self._answers.add(answer)
        self._calls.append((start, loop, failed))
        self._wake.set()
        return await fut

    # -- the worker thread -----------------------------------------------------------
    @staticmethod
    def _trailing_progress(st: SessionState) -> list[Outcome]:
        """SpeechProgress is rate-limited (PROGRESS_EVERY_S); a flush publishes the last value
        that the limit held back, so listeners end with the session's true speech total."""
        if st.speech.speech_ms > st.last_progress_ms:
            st.last_progress_ms = st.speech.speech_ms
            st.last_progress_t = time.monotonic()
            return [(st, SpeechProgress(st.dialog_id, st.speech.speech_ms))]
        return []

    def _close_state(self, st: SessionState) -> None:
        st.closed = True
        st.tickets.clear()
        with self._lock:
            self._states.pop(id(st), None)
        with st.lock:
            st.pending.clear()
            st.pending_samples = 0
        done = SessionSpeech(1)           # free the audio, keep the counters
        done.speech_ms = st.speech.speech_ms
        st.speech = done

    def _emit(self, events: list[Outcome]) -> None:
        loop = self._loop
        for st, ev in events:
            if isinstance(ev, Answer):
                ev.callback(ev.value)
                continue
            if loop is not None and st.on_event is not None:
                loop.call_soon_threadsafe(self._deliver, st, ev)

    @staticmethod
    def _deliver(st: SessionState, ev: Any) -> None:
        if st.closed or st.on_event is None:
            return
        try:
            st.on_event(ev)
        except Exception:  # noqa: BLE001
            log.exception("on_event callback failed for dialog %s", st.dialog_id)

    def _feed(self, states: list[SessionState], max_samples: int | None) -> None:
        assert self._sched is not None
        jobs, events = self.pipeline.feed(states, max_samples)
        self._emit(events)
        self._sched.submit(jobs)
        urgent = {id(j.state) for j in jobs if j.urgent}
        if urgent:
            self._sched.promote(urgent)
        for st in states:
            if st.tickets and st.tickets[0].ready():
                self._emit(self.pipeline.resolve(st))    # e.g. a refined NORMAL of done windows

    def _collect(self) -> None:
        """Resolve the states whose encoder jobs finished."""
        assert self._sched is not None
        fin = self._sched.finished
        touched: dict[int, SessionState] = {}
        while fin:
            j = fin.popleft()
            if j.state is not None:
                touched[id(j.state)] = j.state
        for st in touched.values():
            self._emit(self.pipeline.resolve(st))

    def _run(self) -> None:
        sched = self._sched
        assert sched is not None
        cap = int(ITER_CAP_S * SAMPLE_RATE)
        queue_cap = int(ENCODER_QUEUE_CAP_S * SAMPLE_RATE)
        next_feed = 0.0
        while not self._stop:
            self._wake.wait(max(0.0, next_feed - time.monotonic()))
            self._wake.clear()
            try:
                while self._calls:
                    fn, loop, done = self._calls.popleft()
                    try:
                        res, exc = fn(), None
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
                backlog = (sum(s.pending_samples for s in states) + sched.queued_samples) / SAMPLE_RATE
                self.overloaded = backlog > self.cfg.max_backlog_s
                if states and sched.queued_samples < queue_cap:
                    self._feed(states, cap)
            except Exception as e:  # noqa: BLE001 - keep the worker alive
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("engine worker iteration failed")
        # fail pending calls on stop
        while self._calls:
            fn, loop, done = self._calls.popleft()
            loop.call_soon_threadsafe(done, None, EngineError("engine stopped"))
