"""Fraud signals on live calls: blocklists, synthetic speech (TTS), replay/duplicate audio (PAD).

Per dialog, `DialogFraud` receives the customer audio the dialog receives (push: an append) and
turns it, on one dedicated worker thread (never on the event loop), into the TTS detector's
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import structlog

from engine.fraud import TtsDetector, TtsResult, TtsStream, pad_detected
from engine.fraud.fingerprint import Fingerprinter, match, pack, unpack
from engine.types import Embedding, EngineError, MilestoneKind
from gateway.calls.results import BlocklistResults, BlocklistRow, TtsVerdict, VerificationRow
from gateway.services.blocklists import MATCH, NO_MATCH, NO_RISK
from gateway.store.base import Blocklist, BlocklistEntry, Repository

if TYPE_CHECKING:
    from engine import Engine
    from gateway.calls.bus import ResultsBus
    from gateway.calls.dialog import Dialog
    from gateway.infra.config import FraudConfig
    from gateway.infra.metrics import Metrics

log = structlog.get_logger(__name__)

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


class DialogFraud:
    """One dialog's fraud-signal state: pending audio, LFCC statistics, fingerprint."""

    def __init__(self, service: "FraudService"):
        self.service = service
        self._lock = threading.Lock()
        self._proc_lock = threading.Lock()     # one pass at a time over this dialog's state
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._scheduled = False
        self.dropped_samples = 0
        self.tts: TtsStream | None = service.tts.stream() if service.tts is not None else None
        self.fp = Fingerprinter()
        self.verified_users: set[str] = set()
        self.last_tts: TtsResult | None = None
        self.last_blocklist: list[BlocklistRow] | None = None

    def push(self, samples: np.ndarray) -> None:
        """Event loop: append only (processing happens on the fraud worker)."""
        if not len(samples):
            return
        with self._lock:
            self._pending.append(np.asarray(samples, np.int16))
            self._pending_samples += len(samples)
            while self._pending_samples > MAX_PENDING_S * SR and len(self._pending) > 1:
                old = self._pending.pop(0)
                self._pending_samples -= len(old)
                self.dropped_samples += len(old)
            due = self._pending_samples >= PROCESS_EVERY_S * SR and not self._scheduled
            if due:
                self._scheduled = True
        if due:
            self.service.submit(self._process)

    def _process(self) -> None:
        """Consume the pending audio (the fraud worker's background pass, or a result that
        needs the call so far)."""
        with self._proc_lock:
            with self._lock:
                chunks, self._pending, self._pending_samples = self._pending, [], 0
                self._scheduled = False
            if chunks:
                # one pass over all of it: fewer, larger numpy calls, so fewer GIL hand-overs
                # with the engine's threads
                audio = np.concatenate(chunks)
                if self.tts is not None:
                    self.tts.add(audio)
                self.fp.add(audio)

    async def tts_result(self, detector: TtsDetector) -> TtsResult | None:
        """The TTS detector's verdict on the call so far (pending audio included), read
        under the pass lock so a background pass cannot change the statistics mid-read."""
        def fn():
            self._process()
            with self._proc_lock:
                return detector.result(self.tts) if self.tts is not None else None
        return await self.service.run_now(fn)

    async def landmarks(self) -> tuple[np.ndarray, np.ndarray]:
        """The call's fingerprint so far (pending audio included)."""
        def fn():
            self._process()
            with self._proc_lock:
                return self.fp.landmarks(include_tail=True)
        return await self.service.run_now(fn)

    def memory_bytes(self) -> int:
        return self._pending_samples * 2 + (self.tts.nbytes() if self.tts else 0) + self.fp.nbytes()


class FraudService:
    def __init__(self, cfg: "FraudConfig", engine: "Engine", store: Repository, bus: "ResultsBus", metrics: "Metrics"):
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vbgw-fraud")
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
        try:
            self._executor.submit(self._guard, fn)
        except RuntimeError:          # shut down
            pass

    @staticmethod
    def _guard(fn):
        try:
            return fn()
        except Exception:             # noqa: BLE001 - the worker must survive one bad pass
            log.exception("fraud_worker_failed")

    async def run_now(self, fn):
        """For work a request or result waits for: off the event loop, but not queued behind
        the background passes of every live call on the fraud worker (`submit`)."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def open(self) -> DialogFraud:
        return DialogFraud(self)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

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

    async def pad_for(self, profile_id: str, user_id: str, landmarks, tts: TtsResult | None,
                      exclude_dialog: str | None = None) -> dict | None:
        """Aculab `pad_detected` (None: nothing detected) for audio whose landmarks
        `await landmarks()` gives (asked for only when the user has stored fingerprints),
        against the user's stored enrolment/verification fingerprints, plus the TTS verdict."""
        stored = [f for f in await self.store.fingerprints(profile_id, user_id)
                  if exclude_dialog is None or f.dialog_id != exclude_dialog]
        matches = []
        if stored:
            query = await landmarks()
            if query is not None:
                matches = await self.run_now(lambda: [(f.kind, match(query, unpack(f.hashes))) for f in stored])
        found = pad_detected(matches, tts)
        if found is not None:
            self.metrics.inc("vbgw_pad_detected_total", type=found["type"])
        return found

    async def pad(self, dialog: "Dialog", user_id: str) -> dict | None:
        """`pad_detected` for `user_id` on this call so far (None: nothing detected)."""
        if dialog.profile is None:
            return None
        found = await self.pad_for(dialog.profile.id, user_id, dialog.fraud.landmarks, dialog.fraud.last_tts,
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

    async def dialog_fingerprint(self, dialog: "Dialog") -> bytes | None:
        h, t = await dialog.fraud.landmarks()
        return pack(h, t) if len(h) else None
