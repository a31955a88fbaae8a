"""Fraud signals on live calls: blocklists, synthetic speech (TTS), replay/duplicate audio (PAD).

Per dialog, `DialogFraud` receives the customer audio the dialog receives (push: an append) and
turns it, on the fraud worker's threads (never on the event loop), into the TTS detector's
running evidence (`TtsStream`: a few running sums) and landmark hashes (fingerprints); it keeps
no audio beyond a short pending buffer. At each engine milestone (EARLY, NORMAL, refined NORMAL) `FraudService`:

* checks the milestone's whole-session customer embedding against every entry of every active
  blocklist of the dialog's group and publishes BlocklistResults;
* scores the call so far with the TTS detector and publishes a TtsVerdict.

Verification results (on demand and push NORMALs) get `pad_detected` (engine.fraud.pad) from
the call's fingerprint against the user's stored enrolment and verification fingerprints; at
the end of a call the fingerprint is stored for every user it was verified against.
docs/fraud-signals.md has the design, figures and limits."""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np
import structlog

from engine.fraud import TtsDetector, TtsResult, TtsStream, pad_detected
from engine.fraud.fingerprint import Fingerprinter, pack
from engine.types import Embedding, EngineError, MilestoneKind
from gateway.calls.results import BlocklistResults, BlocklistRow, TtsVerdict, VerificationRow
from gateway.services.blocklists import MATCH, NO_MATCH, NO_RISK
from gateway.services.stored_prints import StoredPrints
from gateway.store.base import Blocklist, BlocklistEntry, Repository

if TYPE_CHECKING:
    from engine import Engine
    from gateway.calls.bus import ResultsBus
    from gateway.calls.dialog import Dialog
    from gateway.infra.config import FraudConfig
    from gateway.infra.metrics import Metrics

log = structlog.get_logger(__name__)
T = TypeVar("T")

SR = 8000
PROCESS_EVERY_S = 4.0      # pending audio that triggers a background pass between milestones
MAX_PENDING_S = 20.0       # beyond this (worker backlog) the oldest pending audio is dropped


def blocklist_results(engine, emb: Embedding, lists: list[tuple[Blocklist, list[BlocklistEntry]]],
                      threshold: float) -> list[BlocklistRow]:
    """One row per active list: MATCH when any of its entries scores llr >= threshold.
    Rows carry the seed's fields (label, status, risk_level, custom_agent_message,
    custom_ui_message) and, for logs and benchmarks, the list id, name and best llr.
    risk_level is the list's level on a MATCH row and NO_RISK on any other."""
    rows = []
    for bl, entries in lists:
        best, best_entry = None, None
        for e in entries:
            if e.model != emb.model:
                continue                       # built by another speaker model: cannot be scored
            s = engine.score(emb, np.frombuffer(e.vector, np.float32))
            if best is None or s.llr > best:
                best, best_entry = s.llr, e
        hit = best is not None and best >= threshold
        rows.append(BlocklistRow(label=MATCH if hit else NO_MATCH, status="CHECKED" if best is not None else "NOT_CHECKED",
                                 risk_level=bl.risk_level if hit else NO_RISK,
                                 custom_agent_message=bl.custom_agent_message if hit else "",
                                 custom_ui_message=bl.custom_ui_message if hit else "",
                                 blocklist_id=bl.id, blocklist_name=bl.name,
                                 entry_id=best_entry.id if hit and best_entry else None,
                                 llr=round(best, 3) if best is not None else None))
    rows.sort(key=lambda r: (r.label != MATCH, -(r.llr if r.llr is not None else -1e9)))
    return rows


class FraudWorker:
    """The threads (two) that run every call's fraud work: background passes in arrival
    order (`submit`) and, ahead of them, the work a result waits for (`run`: a call's
    catch-up before its TTS verdict or PAD check, the fingerprint match). Each of a call's
    signals is processed by one thread at a time (its lane's proc_lock).

    Measured at 100 NICE contacts on the 2-core bench machine (`vbgw bench nice`, NORMAL
    p95 split into engine and scoring): with one background thread and the loop's pool of
    six threads for the waited-for work, the PAD check's ~10 ms of numpy waited ~1 s (p95)
    as six catch-ups took each other's GIL turns (NORMAL p95 2.9 s); with one thread for
    both, that thread's share of two full cores was too small for the fraud work (~0.3
    cores) and results queued behind it (4.8 s); two threads and one priority order: 1.5 s,
    the PAD check's wait 0.4 s."""

    def __init__(self, threads: int = 2, name: str = "vbgw-fraud"):
        self._cv = threading.Condition()
        self._now: deque[Callable[[], object]] = deque()
        self._later: deque[Callable[[], object]] = deque()
        self._stop = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], object]) -> None:
        with self._cv:
            if self._stop:
                return
            self._later.append(fn)
            self._cv.notify()

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(res=None, exc: BaseException | None = None) -> None:     # on the loop
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(res)

        def job() -> None:                                                 # on the worker
            try:
                res, exc = fn(), None
            except Exception as e:  # noqa: BLE001 - the waiting caller gets it
                res, exc = None, e
            try:
                loop.call_soon_threadsafe(settle, res, exc)
            except RuntimeError:                  # the loop has closed: nobody waits
                pass

        with self._cv:
            if self._stop:
                raise RuntimeError("fraud worker stopped")
            self._now.append(job)
            self._cv.notify()
        return await fut

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._now or self._later or self._stop):
                    self._cv.wait()
                if self._now:
                    fn = self._now.popleft()
                elif self._later:
                    fn = self._later.popleft()
                else:
                    return                        # stopped, nothing left
            try:
                fn()
            except Exception:                     # noqa: BLE001 - the worker must survive one bad pass
                log.exception("fraud_worker_failed")

    def close(self) -> None:
        """Finish what is queued, then stop (blocking)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()


class _Lane:
    """One signal's share of a call's customer audio: what it has not consumed yet, and the
    lock over its state (one catch-up at a time). The TTS statistics and the fingerprint are
    two lanes fed the same audio (the same arrays, not copies) and caught up separately: a
    PAD check waits only for the fingerprint's catch-up (about 40 % of the work), a TTS
    verdict only for the TTS statistics', and the two can run on the worker's two threads
    at once."""

    def __init__(self, feed: Callable[[np.ndarray], object]):
        self.feed = feed
        self.lock = threading.Lock()           # pending (the event loop appends)
        self.proc_lock = threading.Lock()      # the state `feed` updates
        self.pending: list[np.ndarray] = []
        self.samples = 0
        self.dropped = 0

    def push(self, samples: np.ndarray) -> int:
        """Append (event loop); returns the samples now pending."""
        with self.lock:
            self.pending.append(samples)
            self.samples += len(samples)
            while self.samples > MAX_PENDING_S * SR and len(self.pending) > 1:
                old = self.pending.pop(0)
                self.samples -= len(old)
                self.dropped += len(old)
            return self.samples

    def catch_up(self) -> None:
        """Consume the pending audio, in one pass (fewer, larger numpy calls: fewer GIL
        hand-overs with the engine's threads). Call with proc_lock held."""
        with self.lock:
            chunks, self.pending, self.samples = self.pending, [], 0
        if chunks:
            self.feed(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))


class DialogFraud:
    """One dialog's fraud-signal state: pending audio, LFCC statistics, fingerprint."""

    def __init__(self, service: "FraudService"):
        self.service = service
        self._lock = threading.Lock()
        self._scheduled = False
        self.tts: TtsStream | None = service.tts.stream() if service.tts is not None else None
        self.fp = Fingerprinter()
        self._tts_lane = _Lane(self.tts.add) if self.tts is not None else None
        self._fp_lane = _Lane(self.fp.add)
        self._lanes = [lane for lane in (self._tts_lane, self._fp_lane) if lane is not None]
        self.verified_users: set[str] = set()
        self.last_tts: TtsResult | None = None
        self.last_blocklist: list[BlocklistRow] | None = None

    @property
    def dropped_samples(self) -> int:
        """Customer audio a signal never saw (its worker fell MAX_PENDING_S behind)."""
        return max(lane.dropped for lane in self._lanes)

    def push(self, samples: np.ndarray) -> None:
        """Event loop: append only (processing happens on the fraud worker)."""
        if not len(samples):
            return
        a = np.asarray(samples, np.int16)
        pending = max([lane.push(a) for lane in self._lanes])
        with self._lock:
            due = pending >= PROCESS_EVERY_S * SR and not self._scheduled
            if due:
                self._scheduled = True
        if due:
            self.service.submit(self._process)

    def _process(self) -> None:
        """The background pass: every lane consumes its pending audio."""
        with self._lock:
            self._scheduled = False
        for lane in self._lanes:
            with lane.proc_lock:
                lane.catch_up()

    async def tts_result(self, detector: TtsDetector) -> TtsResult | None:
        """The TTS detector's verdict on the call so far (pending audio included), read
        under the lane's lock so a background pass cannot change the statistics mid-read."""
        lane, tts = self._tts_lane, self.tts
        if lane is None or tts is None:          # the detector is off (one implies the other)
            return None

        def fn():
            with lane.proc_lock:
                lane.catch_up()
                return detector.result(tts)
        return await self.service.run_now(fn)

    def landmarks_now(self) -> tuple[np.ndarray, np.ndarray]:
        """On the worker: the fingerprint's catch-up, then the call's landmarks so far
        (pending audio included)."""
        lane = self._fp_lane
        with lane.proc_lock:
            lane.catch_up()
            return self.fp.landmarks(include_tail=True)

    async def landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """The call's fingerprint so far (pending audio included)."""
        return await self.service.run_now(self.landmarks_now)

    def memory_bytes(self) -> int:
        # the lanes hold the same arrays: the larger backlog is the audio held
        return (max(lane.samples for lane in self._lanes) * 2 + (self.tts.nbytes() if self.tts else 0)
                + self.fp.nbytes())


class FraudService:
    def __init__(self, cfg: "FraudConfig", engine: "Engine", store: Repository, bus: "ResultsBus", metrics: "Metrics"):
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self._worker = FraudWorker()
        self.prints = StoredPrints(store, self.run_now, max_bytes=cfg.fingerprint_cache_mb << 20)
        self.tts: TtsDetector | None = None
        if cfg.tts_enabled:
            try:
                self.tts = TtsDetector.load(cfg.tts_weights or None)
                if cfg.tts_threshold is not None:
                    self.tts.threshold = cfg.tts_threshold
                log.info("tts_detector_loaded", version=self.tts.version, threshold=round(self.tts.threshold, 4))
            except EngineError as exc:
                log.error("tts_detector_unavailable", error=str(exc))

    # -- plumbing -------------------------------------------------------------------------
    def submit(self, fn) -> None:
        """A background pass (a call's pending audio): after the work results wait for."""
        self._worker.submit(fn)

    async def run_now(self, fn):
        """Work a request or result waits for: off the event loop, ahead of the background
        passes of every live call (see FraudWorker)."""
        return await self._worker.run(fn)

    def open(self) -> DialogFraud:
        return DialogFraud(self)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._worker.close)

    @property
    def blocklist_threshold(self) -> float:
        return float(self.engine.calibration.thr_far(self.cfg.blocklist_far))

    # -- live ------------------------------------------------------------------------------
    async def on_milestone(self, dialog: "Dialog", kind: MilestoneKind, emb: Embedding) -> None:
        """Blocklists and TTS at each milestone; publishes BlocklistResults and a TtsVerdict."""
        fr = dialog.fraud
        if self.tts is not None:
            res = await fr.tts_result(self.tts)
            if res is not None:
                fr.last_tts = res
                payload = res.payload()
                self.bus.publish(dialog.key, TtsVerdict(payload["label"], payload["detectionScore"], str(kind),
                                                        res.speech_frames, self.tts.version))
                self.metrics.inc("vbgw_tts_results_total", label=res.label)
        if dialog.profile is not None:
            lists = await self.store.active_blocklist_entries(dialog.profile.group_id)
            if lists:
                rows = blocklist_results(self.engine, emb, lists, self.blocklist_threshold)
                fr.last_blocklist = rows
                self.bus.publish(dialog.key, BlocklistResults(tuple(rows), str(kind), emb.speech_ms))
                if rows and rows[0].label == MATCH:
                    self.metrics.inc("vbgw_blocklist_matches_total", risk=rows[0].risk_level)
                    dialog.log.warning("blocklist_match", blocklist_id=rows[0].blocklist_id,
                                       risk_level=rows[0].risk_level, result_type=kind)

    async def pad_for(self, profile_id: str, user_id: str,
                      query: Callable[[], tuple[np.ndarray, np.ndarray] | None],
                      tts: TtsResult | None, exclude_dialog: str | None = None) -> dict | None:
        """Aculab `pad_detected` (None: nothing detected) for audio whose landmarks `query()`
        gives (called on the fraud worker, only when the user has stored fingerprints), against
        the user's stored enrolment/verification fingerprints, plus the TTS verdict. The
        landmarks and the match are one job on the worker: a result waits for one turn."""
        prints = await self.prints.get(profile_id, user_id)
        matches = await self.run_now(lambda: prints.matches(query(), exclude_dialog)) if prints else []
        found = pad_detected(matches, tts)
        if found is not None:
            self.metrics.inc("vbgw_pad_detected_total", type=found["type"])
        return found

    async def pad(self, dialog: "Dialog", user_id: str) -> dict | None:
        """`pad_detected` for `user_id` on this call so far (None: nothing detected)."""
        if dialog.profile is None:
            return None
        found = await self.pad_for(dialog.profile.id, user_id, dialog.fraud.landmarks_now, dialog.fraud.last_tts,
                                   exclude_dialog=dialog.dialog_id)
        if found is not None:
            dialog.log.warning("pad_detected", pad_type=found["type"])
        return found

    async def annotate(self, dialog: "Dialog", results: list[VerificationRow],
                       result_type: str) -> list[VerificationRow]:
        """The results with `pad_detected` on scored rows (on-demand and NORMAL); remembers the
        users verified in this call (their VERIFY fingerprints are stored at its end)."""
        out = []
        for r in results:
            if r.voiceprint_id is not None:
                dialog.fraud.verified_users.add(r.user_id)
                if result_type in ("ONDEMAND", "NORMAL"):
                    try:
                        pad = await self.pad(dialog, r.user_id)
                    except Exception:     # noqa: BLE001 - a PAD failure must not lose the result
                        log.exception("pad_check_failed")
                        pad = None
                    r = replace(r, pad_detected=pad)
            out.append(r)
        return out

    async def call_ended(self, dialog: "Dialog") -> None:
        """Store the call's fingerprint as a VERIFY fingerprint of each user verified in it."""
        if dialog.profile is None or not dialog.fraud.verified_users:
            return
        h, t = await dialog.fraud.landmarks()
        if not len(h):
            return
        blob = pack(h, t)
        for uid in sorted(dialog.fraud.verified_users):
            await self.store.add_fingerprint(dialog.profile.id, uid, "VERIFY", dialog.dialog_id, blob,
                                                  keep_verify=self.cfg.keep_verify_fingerprints,
                                                  max_age_ms=int(self.cfg.verify_fingerprint_retention_s * 1000))

    def forget(self, profile_id: str, user_id: str) -> None:
        """The user's stored fingerprints leave this process's cache (opt-out: at once, not at
        the next check or eviction)."""
        self.prints.forget(profile_id, user_id)

    async def dialog_fingerprint(self, dialog: "Dialog") -> bytes | None:
        h, t = await dialog.fraud.landmarks()
        return pack(h, t) if len(h) else None
