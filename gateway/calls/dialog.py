"""Dialogs: one per call and owner. A call is identified by (tenant id, dialog id = masterId =
conversationId); its owner is the VB profile (and so the group) whose audio, results and
enrolments it carries.

Ownership rule (docs/api.md, "Who sees a call"):

* The connector that carries a call's audio fixes its owner: the direct stream's session
  token's profile; AudioHook's profile (customConfig `vbProfile`, else the organisation's
  default profile).
* A session reaches only the dialog of its own profile on its masterId. A session that comes
  before the audio (an agent's on-demand request before the AudioHook stream opens) creates
  that dialog, and the connector of the same owner later feeds it.
* A session of another profile or group on the same masterId gets a dialog of its own, with
  none of the other's audio or results; two owners' streams never mix.
* Only an AudioHook call whose profile nobody configured starts without an owner: the first
  authorised session of the tenant to reach it owns it from then on (and if sessions came
  first, it joins the dialog of the first of them).

The owner never changes once set (`Dialog.profile` has no setter).

A dialog holds the call's state: status, the engine's per-call session, the users under
verification and its live results, which it publishes on the bus under its own key."""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from connectors.base import Frame
from engine.types import Milestone, SpeechLimits, SpeechProgress
from gateway.calls.bus import BusMessage
from gateway.store.base import Profile

if TYPE_CHECKING:
    from gateway.services.users import Core

log = structlog.get_logger(__name__)

# Call statuses, as the seed's /dialog-status lists them (meanings in docs/api.md).
CALL_OPENED = "CALL_OPENED"
BIO_ACTIVE = "BIO_ACTIVE"
SYSTEM_ERROR = "SYSTEM_ERROR"
CALL_CLOSED = "CALL_CLOSED"
# The `reason` of a call's statuses while its stream carries no customer (external) audio.
NO_CUSTOMER_AUDIO = "NO_CUSTOMER_AUDIO"

_SERIAL = itertools.count(1)


def limits_for(profile: Profile | None) -> SpeechLimits:
    if profile is None:
        return SpeechLimits()
    s = profile.settings
    return SpeechLimits(early_ms=s.early_speech_ms, verify_ms=s.verify_min_speech_ms,
                        enrol_ms=s.enrol_min_speech_ms, refine_ms=s.refine_speech_ms)


@dataclass(frozen=True)
class Verification:
    """One verification of a call: its users and its number (`epoch`, counting from 1 per
    dialog). Every bus "verification" message carries its epoch, so a reader bound to one
    verification can tell its own results from a newer verification's."""
    epoch: int
    users: tuple[str, ...]


class Dialog:
    def __init__(self, core: "Core", tenant_id: str, dialog_id: str, profile: Profile | None):
        self.core = core
        self.tenant_id = tenant_id
        self.dialog_id = dialog_id
        # The bus key: unique per dialog, since several owners may each have a dialog on one
        # masterId (index 1 stays the dialog id: logs and the live bench read it).
        self.key = (tenant_id, dialog_id, str(next(_SERIAL)))
        self._profile = profile
        self.retired = False
        self.status = CALL_OPENED
        self.status_data: dict[str, Any] = {"status": CALL_OPENED}
        self.no_customer_audio = False
        self.created = time.time()
        self.closed_at: float | None = None
        self.active_streams = 0
        self.streamed = False                 # a stream ever fed it (see idle_since)
        self.frames = 0
        self.samples_in = 0
        self.steps = 0                        # dialog_step of vb_verification events
        self.verification: Verification | None = None     # the call's push verification
        self.verification_started: BusMessage | None = None   # its STARTING message
        self.verification_latest: BusMessage | None = None    # its latest result message
        self.speaker_change_published = False
        self.log = log.bind(dialog_id=dialog_id)
        self._tasks: set[asyncio.Task] = set()
        self.engine_session = core.engine.open_session(dialog_id, limits_for(profile), self._on_engine_event)
        self.fraud = core.fraud.open()         # fraud signals (gateway/fraud.py)
        self.publish_status(CALL_OPENED)

    # -- ownership ---------------------------------------------------------------------------
    @property
    def profile(self) -> Profile | None:
        """The owner (None only for an AudioHook call no one has claimed yet). Read-only."""
        return self._profile

    def _claim(self, profile: Profile) -> None:
        """DialogRegistry only: the first authorised session becomes the owner of an unowned call."""
        if self._profile is not None:
            raise RuntimeError("a dialog's owner never changes")
        self._profile = profile
        self.engine_session.set_limits(limits_for(profile))

    def owned_by(self, profile: Profile) -> bool:
        return self._profile is not None and self._profile.id == profile.id

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

    def stream_started(self, customer_audio: bool = True) -> None:
        """A connector starts feeding the dialog; `customer_audio=False` when its media carries
        no customer (external) channel: the statuses then say NO_CUSTOMER_AUDIO."""
        self.streamed = True
        self.active_streams += 1
        self.closed_at = None
        was = self.no_customer_audio
        self.no_customer_audio = not customer_audio
        if self.status in (CALL_CLOSED, SYSTEM_ERROR) or was != self.no_customer_audio:
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
        if self.no_customer_audio and extra.get("reason") in (None, "completed", "disconnected"):
            extra["reason"] = NO_CUSTOMER_AUDIO
        self.status_data = {"status": status, **extra}
        self.core.bus.publish(self.key, "status", self.status_data)

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

    async def _score_milestone(self, m: Milestone, v: Verification | None = None) -> None:
        try:
            v = v or self.verification
            if v is None or self.profile is None:
                return
            results = await self.core.score_users(self, m.embedding, list(v.users), m.speaker_change,
                                                  result_type=m.kind, delayed=m.delayed)
            if not self.publish_verification(v, m.kind, results):
                return                              # a newer request replaced this verification meanwhile
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

    # -- push verification: one per call ----------------------------------------------------
    def publish_verification(self, v: Verification, result_type: str, results: list[dict], **extra: Any) -> bool:
        """Publish a message of verification `v` (STARTING or results, best first). Results of
        a verification that a newer request replaced are dropped (False): no reader ever gets
        rows of users other than those its verification named."""
        if self.verification is not v:
            return False
        msg = self.core.bus.publish(self.key, "verification", {"result_type": result_type, "results": results,
                                                               "epoch": v.epoch, **extra})
        if result_type == "STARTING":
            self.verification_started, self.verification_latest = msg, None
        else:
            self.verification_latest = msg
        return True

    def verification_snapshot(self) -> list[BusMessage]:
        """What a reader joining the running verification is owed: its STARTING and its latest
        result (if any), whatever the bus history still holds."""
        return [m for m in (self.verification_started, self.verification_latest) if m is not None]

    async def request_verification(self, users: list[str]) -> tuple[Verification, bool]:
        """A push verification request from any surface (SSE /verification, Socket.IO
        `verification`, the widget, AudioHook's automatic verification). A call has one
        verification at a time (docs/live-results.md): a request naming the users already
        under verification joins it (returns it and False: nothing restarts, no reader is
        ended); a request naming other users replaces it (the new one and True): a new epoch,
        its STARTING, which ends every reader of the previous one, and at once the score of
        the speech so far."""
        if self.verification is not None and set(users) == set(self.verification.users):
            return self.verification, False
        v = Verification((self.verification.epoch if self.verification else 0) + 1, tuple(users))
        self.verification = v
        self.publish_verification(v, "STARTING", [
            {"bio_result": "", "bio_score": 0.0, "bio_user_id": u, "user_id": u, "llr": 0.0,
             "result_type": "STARTING", "speech_millis": 0, "error_type": None} for u in users])
        # A request made after the speech milestones passed gets the score of the speech so far
        # at once, instead of waiting for the next refinement (or forever, if the call ended).
        if self.profile is not None and self.engine_session.speech_ms >= self.profile.settings.early_speech_ms:
            emb = await self.engine_session.embedding()
            if emb is not None:
                kind = "NORMAL" if emb.speech_ms >= self.profile.settings.verify_min_speech_ms else "EARLY"
                await self._score_milestone(Milestone(self.dialog_id, kind, emb, self.engine_session.speaker_change), v)
        return v, True

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.engine_session.close()


class DialogRegistry:
    """Every dialog, by call: (tenant id, dialog id) -> its dialogs, one per owner (almost
    always one). The ownership rule is the module docstring's; these methods are its only
    implementation."""

    def __init__(self, core: "Core", retain_after_close_s: float):
        self.core = core
        self.retain_after_close_s = retain_after_close_s
        self._calls: dict[tuple[str, str], list[Dialog]] = {}
        self._reaper: asyncio.Task | None = None

    def _new(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        d = Dialog(self.core, tenant_id, dialog_id, profile)
        self._calls.setdefault((tenant_id, dialog_id), []).append(d)
        self.core.metrics.inc("vbgw_dialogs_opened_total")
        return d

    def for_session(self, tenant_id: str, dialog_id: str, profile: Profile, create: bool = False) -> Dialog | None:
        """The dialog a session of `profile` reaches on its masterId: its own profile's; else an
        unowned AudioHook call, which it claims; else (create) a new one of its own, which the
        call's connector will feed if it has the same owner."""
        dialogs = self._calls.get((tenant_id, dialog_id), ())
        for d in dialogs:
            if d.owned_by(profile):
                return d
        for d in dialogs:
            if d.profile is None:
                d._claim(profile)
                d.log.info("dialog_claimed", profile_id=profile.id)
                return d
        return self._new(tenant_id, dialog_id, profile) if create else None

    def for_connector(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        """The dialog a connector's audio feeds. With an owner: that owner's dialog (made by a
        session before the audio, or new). Without: the call's unowned dialog, else the dialog
        of the first session that reached the call, else a new unowned one."""
        dialogs = self._calls.get((tenant_id, dialog_id), ())
        if profile is not None:
            return next((d for d in dialogs if d.owned_by(profile)), None) or self._new(tenant_id, dialog_id, profile)
        unowned = next((d for d in dialogs if d.profile is None), None)
        if unowned is not None:
            return unowned
        if dialogs:
            return min(dialogs, key=lambda d: d.created)
        return self._new(tenant_id, dialog_id, None)

    def of_group(self, tenant_id: str, dialog_id: str, group_id: str) -> list[Dialog]:
        """The call's dialogs owned by profiles of `group_id` (another group's look absent)."""
        return [d for d in self._calls.get((tenant_id, dialog_id), ()) if d.profile is not None
                and d.profile.group_id == group_id]

    def all(self) -> list[Dialog]:
        return [d for ds in self._calls.values() for d in ds]

    def live(self) -> int:
        return sum(1 for ds in self._calls.values() for d in ds if d.active_streams > 0)

    def __len__(self) -> int:
        return sum(len(ds) for ds in self._calls.values())

    async def retire(self, d: Dialog) -> None:
        call = (d.tenant_id, d.dialog_id)
        dialogs = self._calls.get(call, [])
        if d in dialogs:
            dialogs.remove(d)
            if not dialogs:
                del self._calls[call]
        d.retired = True
        await d.close()
        self.core.bus.forget(d.key)

    async def reap_once(self) -> None:
        """Retire dialogs without audio for retain_after_close_s: closed ones, and ones no
        stream ever fed (they would otherwise live for ever)."""
        now = time.time()
        for d in self.all():
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
        for d in self.all():
            await self.retire(d)
