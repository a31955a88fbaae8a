"""Dialogs: one per call, keyed by (tenant id, dialog id = masterId = conversationId).

A dialog owns the call's state: its profile, status, the engine's per-call session, the
users it is being verified against and its live results, which it publishes on the bus."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from connectors.base import Frame
from engine.types import Milestone, SpeechLimits, SpeechProgress
from gateway.store.base import Profile

if TYPE_CHECKING:
    from gateway.core import Core

log = structlog.get_logger(__name__)

# Call statuses, as the seed's /dialog-status lists them (meanings in docs/api.md).
CALL_OPENED = "CALL_OPENED"
BIO_ACTIVE = "BIO_ACTIVE"
SYSTEM_ERROR = "SYSTEM_ERROR"
CALL_CLOSED = "CALL_CLOSED"


def limits_for(profile: Profile | None) -> SpeechLimits:
    if profile is None:
        return SpeechLimits()
    s = profile.settings
    return SpeechLimits(early_ms=s.early_speech_ms, verify_ms=s.verify_min_speech_ms,
                        enrol_ms=s.enrol_min_speech_ms, refine_ms=s.refine_speech_ms)


class Dialog:
    def __init__(self, core: "Core", tenant_id: str, dialog_id: str, profile: Profile | None):
        self.core = core
        self.tenant_id = tenant_id
        self.dialog_id = dialog_id
        self.key = (tenant_id, dialog_id)
        self.profile = profile
        self.status = CALL_OPENED
        self.created = time.time()
        self.closed_at: float | None = None
        self.active_streams = 0
        self.streamed = False                 # a stream ever fed it (see idle_since)
        self.frames = 0
        self.samples_in = 0
        self.steps = 0                        # dialog_step of vb_verification events
        self.targets: list[str] = []          # users of the push verification
        self.last_results: list[dict] | None = None
        self.speaker_change_published = False
        self.log = log.bind(dialog_id=dialog_id)
        self._tasks: set[asyncio.Task] = set()
        self.engine_session = core.engine.open_session(dialog_id, limits_for(profile), self._on_engine_event)
        self.fraud = core.fraud.open()         # fraud signals (gateway/fraud.py)
        self.publish_status(CALL_OPENED)

    # -- audio in ---------------------------------------------------------------------------
    def push(self, frame: Frame) -> None:
        self.frames += 1
        if frame.channel == "customer":
            self.samples_in += len(frame.samples)
            self.fraud.push(frame.samples)
        self.engine_session.push(frame.channel, frame.samples)
        self.core.metrics.inc("vbgw_frames_total")

    @property
    def idle_since(self) -> float | None:
        """Since when the dialog has had no audio: its close, or its creation if no stream
        ever fed it (a session that only asked for status or an on-demand verification);
        None while a stream is open."""
        if self.active_streams:
            return None
        return self.closed_at if self.closed_at is not None else (None if self.streamed else self.created)

    def stream_started(self) -> None:
        self.streamed = True
        self.active_streams += 1
        self.closed_at = None
        if self.status in (CALL_CLOSED, SYSTEM_ERROR):
            self.publish_status(CALL_OPENED)

    async def stream_ended(self, reason: str) -> None:
        self.active_streams = max(0, self.active_streams - 1)
        if self.active_streams == 0:
            # In a task of the dialog's own: the connection's handler may be cancelled once its
            # socket has closed, and the end status must still be published.
            await asyncio.shield(self._spawn(self._end_call(reason)))

    async def _end_call(self, reason: str) -> None:
        await self.drain()
        try:
            await self.core.fraud.call_ended(self)      # fingerprints of the users verified
        except Exception:                              # noqa: BLE001 - the end must still be published
            self.log.exception("fraud_call_end_failed")
        if self.active_streams == 0:
            self.closed_at = time.time()
            self.publish_status(CALL_CLOSED if reason in ("completed", "disconnected") else SYSTEM_ERROR,
                                reason=reason)

    async def drain(self, timeout: float = 5.0) -> None:
        """Let the engine finish the call's audio and its results go out, so live clients see
        them before the call's end status (a fast sender can be ahead of the engine)."""
        try:
            await asyncio.wait_for(self.engine_session.flush(), timeout)
            await asyncio.sleep(0)                 # the engine's events are delivered first
            others = [t for t in self._tasks if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=timeout)
        except Exception:                          # noqa: BLE001 - the end must still be published
            self.log.warning("drain_failed")

    # -- results out ------------------------------------------------------------------------
    def publish_status(self, status: str, **extra: Any) -> None:
        self.status = status
        self.core.bus.publish(self.key, "status", {"status": status, **extra})

    def _on_engine_event(self, event) -> None:
        """Called on the event loop by the engine."""
        if isinstance(event, SpeechProgress):
            if self.status == CALL_OPENED and event.speech_ms > 0:
                self.publish_status(BIO_ACTIVE)
            enough = self.profile is not None and event.speech_ms >= self.profile.settings.enrol_min_speech_ms
            self.core.bus.publish(self.key, "clean_speech", {"speech_millis": event.speech_ms,
                                                             "enough_speech": enough})
        elif isinstance(event, Milestone):
            change = event.speaker_change
            if change.user_changed and not self.speaker_change_published:
                # Once per call (the flag is sticky): agents need the moment, not a stream.
                self.speaker_change_published = True
                self.core.bus.publish(self.key, "speaker_change", {
                    "user_changed": True, "scd_llr": change.scd_llr, "scd_nllr": change.scd_nllr,
                    "result_type": event.kind, "speech_millis": event.embedding.speech_ms})
                self.core.metrics.inc("vbgw_speaker_changes_total")
                self.log.warning("speaker_change", result_type=event.kind)
            self._spawn(self._score_milestone(event))
            self._spawn(self._fraud_milestone(event))

    def _spawn(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _score_milestone(self, m: Milestone) -> None:
        try:
            if not self.targets or self.profile is None:
                return
            results = await self.core.score_users(self, m.embedding, self.targets, m.speaker_change,
                                                  result_type=m.kind, delayed=m.delayed)
            self.last_results = results
            self.core.bus.publish(self.key, "verification", {"result_type": m.kind, "results": results})
            self.core.metrics.inc("vbgw_results_total", type=m.kind, result=results[0]["bio_result"])
            if m.arrived is not None:
                # From the moment enough speech had arrived to the result leaving for its clients.
                self.core.metrics.observe(f"vbgw_{m.kind.lower()}_result_delay_seconds", time.monotonic() - m.arrived)
            if m.kind == "NORMAL":
                await self.core.emit_verification_event(self, results[0], m.embedding, m.speaker_change)
        except Exception:
            self.log.exception("milestone_scoring_failed")
            self.publish_status(SYSTEM_ERROR, reason="ENGINE_ERROR")

    async def _fraud_milestone(self, m: Milestone) -> None:
        try:
            await self.core.fraud.on_milestone(self, m.kind, m.embedding)
        except Exception:
            self.log.exception("fraud_signals_failed")

    async def set_targets(self, users: list[str]) -> None:
        self.targets = users
        self.core.bus.publish(self.key, "verification", {"result_type": "STARTING", "results": [
            {"bio_result": "", "bio_score": 0.0, "bio_user_id": u, "user_id": u, "llr": 0.0,
             "result_type": "STARTING", "speech_millis": 0, "error_type": None} for u in users]})
        # A request made after the speech milestones passed gets the score of the speech so far
        # at once, instead of waiting for the next refinement (or forever, if the call ended).
        if self.profile is not None and self.engine_session.speech_ms >= self.profile.settings.early_speech_ms:
            emb = await self.engine_session.embedding()
            if emb is not None:
                kind = "NORMAL" if emb.speech_ms >= self.profile.settings.verify_min_speech_ms else "EARLY"
                await self._score_milestone(Milestone(self.dialog_id, kind, emb, self.engine_session.speaker_change))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.engine_session.close()


class DialogRegistry:
    def __init__(self, core: "Core", retain_after_close_s: float):
        self.core = core
        self.retain_after_close_s = retain_after_close_s
        self._dialogs: dict[tuple[str, str], Dialog] = {}
        self._reaper: asyncio.Task | None = None

    def get(self, tenant_id: str, dialog_id: str) -> Dialog | None:
        return self._dialogs.get((tenant_id, dialog_id))

    def get_or_create(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        d = self._dialogs.get((tenant_id, dialog_id))
        if d is None:
            d = Dialog(self.core, tenant_id, dialog_id, profile)
            self._dialogs[d.key] = d
            self.core.metrics.inc("vbgw_dialogs_opened_total")
        elif d.profile is None and profile is not None:
            d.profile = profile
        return d

    def live(self) -> int:
        return sum(1 for d in self._dialogs.values() if d.active_streams > 0)

    def __len__(self) -> int:
        return len(self._dialogs)

    async def retire(self, d: Dialog) -> None:
        self._dialogs.pop(d.key, None)
        await d.close()
        self.core.bus.forget(d.key)

    async def reap_once(self) -> None:
        """Retire dialogs without audio for retain_after_close_s: closed ones, and ones no
        stream ever fed (they would otherwise live for ever)."""
        now = time.time()
        for d in list(self._dialogs.values()):
            since = d.idle_since
            if since is not None and now - since > self.retain_after_close_s:
                await self.retire(d)

    async def housekeep(self) -> None:
        """One round of the reaper: retire idle dialogs, and delete expired session rows
        (their customProperties included) instead of keeping them for ever."""
        try:
            await self.reap_once()
        except Exception:
            log.exception("dialog_reaper_failed")
        try:
            await self.core.purge_expired_sessions()
        except Exception:
            log.exception("session_purge_failed")

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, max(1.0, self.retain_after_close_s / 4)))
            await self.housekeep()

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop())

    async def wait_streams_done(self, timeout: float) -> None:
        """Graceful shutdown: let open streams finish for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.live() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for d in list(self._dialogs.values()):
            await self.retire(d)
