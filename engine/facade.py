"""The engine's public API: Engine, EngineSession (one call), FileEmbedder (one upload).

How the parts fit (docs/scoring.md has the long version):

  EngineSession.push() (event loop) -> SessionState.pending       cheap append (state.py)
  coordinator thread ("vbgw-engine", coordinator.py), every FEED_EVERY_S:
     the pipeline's feed (pipeline.py): up to ITER_CAP_S of pending audio per session, the
     silero VAD batched across sessions (one ORT call per 32 ms chunk index), speech into the
     session's current window; a full window -> encoder job + window ticket; EARLY -> a
     partial-window job; the first NORMAL cuts the window there (one job); milestones ->
     tickets on the session's in-order ticket queue
  encoder threads ("vbgw-encoder-N", cfg.threads, scheduler.py): one job per thread, urgent
     first (milestones and what they wait for), then background windows
  file threads ("vbgw-files-N", cfg.file_threads, niced): uploaded files block by block
     (FileEmbedder via run_file_work), only while no live job is queued
  coordinator, as jobs finish: the pipeline's resolve: the session's ready tickets in order ->
     window embeddings, speaker change, Milestone events; SpeechProgress from the VAD pass
  events -> loop.call_soon_threadsafe(on_event, ...)
  scoring (scoring.py): an embedding against a voiceprint, under the calibration

VAD, bookkeeping and encoding overlap on different cores (threads.py keeps BLAS threads off
them). A session keeps only the embeddings of its finished windows and the audio of the
current window (plus windows queued for the encoder), so its memory is bounded whatever the
call length.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable

import numpy as np

from .audio import check_pcm, coerce_frame
from .calibration import Calibration
from .config import EngineConfig
from .coordinator import Coordinator, Settle
from .encoders import load_encoder
from .models import model_path
from .pipeline import Pipeline
from .scheduler import EncoderScheduler, FileTask
from .scoring import Scorer
from .state import Answer, SessionState
from .threads import limit_blas_threads
from .types import (SAMPLE_RATE, BandTargets, Channel, Embedding, EngineError, EngineStats, ModelInfo, Score,
                    SessionEvent, SpeakerChange, SpeechLimits)
from .vad import CHUNK_MS, SileroVad

log = logging.getLogger("vbgw.engine")

FILE_BLOCK_S = 5.0          # audio per unit of file work: its VAD and at most one window to embed


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("vbgw")
    except Exception:  # noqa: BLE001
        return "0.1.0"


class FileEmbedder:
    """The embedding of one uploaded file, built block by block so that a file of any
    length needs only its current block and window in memory (a whole file's int16 array,
    its VAD input and per-sample arrival times were several times its size).

    `add()` and `result()` run on a file thread (Engine.run_file_work), one at a time; the
    embedding equals the one-shot path's (Engine.embed_many_sync): the VAD is stateful and
    cut on the same 256-sample chunks, and windows are cut from the same speech."""

    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline
        self._st = SessionState("", SpeechLimits(), None, pipeline.window_samples)

    def add(self, pcm: np.ndarray) -> None:
        """VAD over `pcm` (int16 8 kHz) and embed the windows it fills, on this thread."""
        pcm = check_pcm(pcm)
        if not len(pcm):
            return
        st = self._st
        st.pending.append((0.0, pcm))
        st.pending_samples += len(pcm)
        jobs, _ = self._pipeline.feed([st], None, milestones=False)
        for job in jobs:
            self._pipeline.run_job(job)
        self._pipeline.resolve(st)               # window tickets only: no events to deliver

    def result(self) -> Embedding | None:
        """The file's embedding (its windows and the last partial window); None without
        speech. The < 256-sample tail is ignored, as in a live session."""
        out: list[Embedding | None] = []
        job = self._pipeline.session_ticket(self._st, out.append)
        if job is not None:
            self._pipeline.run_job(job)
        for _, ev in self._pipeline.resolve(self._st):
            if isinstance(ev, Answer):
                ev.callback(ev.value)
        return out[0] if out else None

    def memory_bytes(self) -> int:
        return self._st.memory_bytes()


class EngineSession:
    """One dialog. push() from the event loop; results arrive through on_event."""

    def __init__(self, coordinator: Coordinator, state: SessionState):
        self._coordinator = coordinator
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
            self._coordinator.enqueue(st, a)
        except Exception:  # noqa: BLE001 - push must never raise into the gateway
            log.exception("push failed for dialog %s", self.dialog_id)

    async def embedding(self) -> Embedding | None:
        """The whole session so far (pending audio included)."""
        return await self._coordinator.settle(self._st, Settle.SESSION)

    async def flush(self) -> None:
        """Process all pending audio (VAD, finished windows, milestones) without embedding
        the partial window: cheap, for draining a call at its end."""
        if not self._st.closed:
            await self._coordinator.settle(self._st, Settle.FLUSH)

    async def close(self) -> None:
        if self._st.closed:
            return
        await self._coordinator.settle(self._st, Settle.CLOSE)

    def memory_bytes(self) -> int:
        return self._st.memory_bytes()


class Engine:
    """The engine of one process: load() the models, start() its threads, then open a
    session per call, embed uploaded files as file work, and score embeddings."""

    def __init__(self, cfg: EngineConfig, pipeline: Pipeline, info: ModelInfo):
        self.cfg = cfg
        self.info = info
        self.ready = False
        self._pipeline = pipeline
        self._scorer = Scorer(pipeline.cal, info.model)
        self._coordinator = Coordinator(cfg, pipeline)
        self._scheduler: EncoderScheduler | None = None

    # -- construction ----------------------------------------------------------------
    @classmethod
    def load(cls, cfg: EngineConfig | None = None) -> "Engine":
        cfg = cfg or EngineConfig()
        import scipy.signal  # noqa: F401  (load scipy's OpenBLAS before capping it)
        limit_blas_threads(1)
        encoder = load_encoder(cfg.encoder, cfg.model_dir, runtime=cfg.runtime, threads=cfg.threads,
                               cache_dir=cfg.cache_dir)
        vad = SileroVad(model_path(cfg.model_dir, "silero_vad"), threads=1,
                        threshold=cfg.vad_threshold, pad_chunks=cfg.vad_pad_ms // CHUNK_MS)
        cal = Calibration.load(cfg.encoder)
        info = ModelInfo(model=encoder.model, extractor_version=encoder.extractor_version,
                         method="cosine+linear-calibration", plda_version=cal.id,
                         sw_version=_version(), dim=encoder.dim)
        return cls(cfg, Pipeline(cfg, encoder, vad, cal), info)

    @property
    def calibration(self) -> Calibration:
        return self._pipeline.cal

    async def start(self) -> None:
        if self._coordinator.running:
            return
        self._scheduler = EncoderScheduler(self._pipeline, self.cfg.threads, self._coordinator.wake,
                                           file_threads=self.cfg.file_threads, file_nice=self.cfg.file_nice)
        self._coordinator.start(asyncio.get_running_loop(), self._scheduler)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self._coordinator.stop()
        sched, self._scheduler = self._scheduler, None
        if sched is not None:
            await asyncio.get_running_loop().run_in_executor(None, sched.stop)
        self._coordinator.fail_waiting()

    # -- sessions --------------------------------------------------------------------
    def open_session(self, dialog_id: str, limits: SpeechLimits,
                     on_event: Callable[[SessionEvent], None]) -> EngineSession:
        st = SessionState(dialog_id, limits, on_event, self._pipeline.window_samples)
        self._coordinator.add(st)
        return EngineSession(self._coordinator, st)

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
            await self.run_file_work(functools.partial(fe.add, pcm[i:i + step]))
        return await self.run_file_work(fe.result)

    def file_embedder(self) -> FileEmbedder:
        """A streaming whole-file embedder; call its methods through run_file_work."""
        return FileEmbedder(self._pipeline)

    async def run_file_work(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on a file thread and return its result: work for uploaded files,
        which live calls always come before (see EncoderScheduler). Keep each call to a block
        of a file (FILE_BLOCK_S), so several uploads take turns."""
        sched = self._scheduler
        if sched is None:
            raise EngineError("engine not started")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(res: Any, exc: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(res)

        def done(res: Any, exc: BaseException | None) -> None:             # a file thread
            loop.call_soon_threadsafe(settle, res, exc)

        sched.submit_file(FileTask(fn, done))
        return await fut

    def embed_many_sync(self, pcms: list[np.ndarray]) -> list[Embedding | None]:
        """Batch form of embed_pcm for scripts (calibration, benchmarks); not thread-safe
        with a running worker."""
        return self._pipeline.embed_many([check_pcm(p) for p in pcms])

    # -- passphrases (engine.passphrase; text-dependent verification) ---------------
    def vad_speech(self, pcm: np.ndarray) -> np.ndarray:
        """Speech flags per 32 ms chunk of a whole file (the session VAD's model, a fresh
        stream: safe beside running sessions)."""
        from .passphrase import vad_speech
        return vad_speech(self._pipeline.vad, check_pcm(pcm))

    def phrase_features(self, pcm: np.ndarray) -> np.ndarray | None:
        """A passphrase utterance's speech-frame features (engine.passphrase.phrase_features,
        speech picked by the VAD); None when it has too little speech. CPU-bound: run it off
        the event loop."""
        from .passphrase import phrase_features
        return phrase_features(pcm, self.vad_speech(pcm))

    # -- scoring (scoring.py) ------------------------------------------------------------
    def score(self, embedding: Embedding, voiceprint: np.ndarray) -> Score:
        return self._scorer.score(embedding, voiceprint)

    def classify(self, llr: float, targets: BandTargets) -> str:
        return self._scorer.classify(llr, targets)

    def thresholds(self, targets: BandTargets) -> dict[str, float]:
        return self._scorer.thresholds(targets)

    def merge(self, voiceprint: np.ndarray, voiceprint_speech_ms: int, new: Embedding) -> Embedding:
        return self._scorer.merge(voiceprint, voiceprint_speech_ms, new)

    def stats(self) -> EngineStats:
        states = self._coordinator.states()
        sched = self._scheduler
        encoder_queue = sched.queued_samples if sched is not None else 0
        depth = sum(st.pending_samples for st in states) + encoder_queue
        backlog_s = depth / SAMPLE_RATE
        overloaded = backlog_s > self.cfg.max_backlog_s or self._coordinator.overloaded
        return EngineStats(sessions=len(states), queue_depth=depth,
                           audio_seconds=round(self._pipeline.audio_s, 3),
                           speech_seconds=round(self._pipeline.speech_s, 3),
                           overloaded=overloaded,
                           extra={"backlog_s": round(backlog_s, 3),
                                  "dropped_audio_s": self._coordinator.dropped_ms / 1000.0,
                                  "encoder_queue_s": round(encoder_queue / SAMPLE_RATE, 3),
                                  "file_work_queued": sched.files_queued if sched is not None else 0,
                                  "encoder": self.info.extractor_version,
                                  "last_error": self._coordinator.last_error})
