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
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from .audio import check_pcm, coerce_frame
from .calibration import Calibration, sigmoid
from .config import EngineConfig
from .encoders import load_encoder
from .models import model_path
from .pipeline import _Core
from .scheduler import _FileTask, _Scheduler
from .state import _Answer, _Speech, _State, _Ticket
from .threads import _limit_threads
from .types import (SAMPLE_RATE, BandTargets, Channel, Embedding, EngineError,
                    EngineStats, ModelInfo, Score, SessionEvent, SpeakerChange,
                    SpeechLimits, SpeechProgress)
from .vad import CHUNK, CHUNK_MS, SileroVad

log = logging.getLogger("vbgw.engine")

ITER_CAP_S = 2.0            # audio per session taken by one worker iteration
FEED_EVERY_S = 0.1          # the worker's VAD cadence (a pass batches every stream's new audio)
ENCODER_QUEUE_CAP_S = 120.0 # audio queued for the encoder beyond which new audio waits
FILE_BLOCK_S = 5.0          # audio per unit of file work: its VAD and at most one window to embed


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("vbgw")
    except Exception:  # noqa: BLE001
        return "0.1.0"


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
