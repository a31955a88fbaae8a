"""Dialogs: one per call and owner. A call is identified by (tenant id, dialog id = masterId =
conversationId); its owner is the VB profile (and so the group) whose audio, results and
enrolments it carries.

Ownership rule (docs/api.md, "Who sees a call"):

* The connector that carries a call's audio fixes its owner: the direct stream's session
  token's profile; AudioHook's profile (customConfig `vbProfile`, else the organisation's
  default profile); NICE's (the script parameters' `vbProfile`, else the business unit's).
* A session reaches only the dialog of its own profile on its masterId. A session that comes
  before the audio (an agent's on-demand request before the AudioHook stream opens) creates
  that dialog, and the connector of the same owner later feeds it.
* A session of another profile or group on the same masterId gets a dialog of its own, with
  none of the other's audio or results; two owners' streams never mix.
* Only an AudioHook call whose profile nobody configured starts without an owner: the first
  authorised session of the tenant to reach it owns it from then on (and if sessions came
  first, it joins the dialog of the first of them).

The owner never changes once set (`Dialog.profile` has no setter). gateway/calls/registry.py
finds and creates dialogs by this rule.

A dialog holds the call's state: status, the engine's per-call session, the streams feeding it
(gateway/calls/attach.py), the push verification and its live results, which it publishes on the
bus under its own key. It works through the narrow collaborators of `CallServices` (engine
sessions, bus, scorer, fraud signals, metrics), never through the gateway as a whole, so that a
test can build one with fakes (tests/gateway/test_dialog_unit.py)."""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import structlog

from connectors.base import Channel, Frame
from engine.types import Embedding, Milestone, MilestoneKind, SpeakerChange, SpeechLimits, SpeechProgress
from gateway.calls.bus import BusMessage, ResultsBus
from gateway.calls.results import CleanSpeech, SpeakerChanged, Status, VerificationResults, VerificationRow
from gateway.store.base import Profile

if TYPE_CHECKING:
    from engine import EngineSession
    from gateway.infra.metrics import Metrics

log = structlog.get_logger(__name__)

# Call statuses, as the seed's /dialog-status lists them (meanings in docs/api.md).
CALL_OPENED = "CALL_OPENED"
BIO_ACTIVE = "BIO_ACTIVE"
SYSTEM_ERROR = "SYSTEM_ERROR"
CALL_CLOSED = "CALL_CLOSED"
# The `reason` of a call's statuses while its stream carries no customer (external) audio.
NO_CUSTOMER_AUDIO = "NO_CUSTOMER_AUDIO"
# Stream end reasons that close a call normally (any other is an error: SYSTEM_ERROR).
NORMAL_ENDS = ("completed", "disconnected")
ALL_CHANNELS: frozenset[Channel] = frozenset(("customer", "agent"))

_SERIAL = itertools.count(1)


def limits_for(profile: Profile | None) -> SpeechLimits:
    if profile is None:
        return SpeechLimits()
    s = profile.settings
    return SpeechLimits(early_ms=s.early_speech_ms, verify_ms=s.verify_min_speech_ms,
                        enrol_ms=s.enrol_min_speech_ms, refine_ms=s.refine_speech_ms)


@dataclass(frozen=True)
class PushVerification:
    """One verification of a call: its users and its number (`epoch`, counting from 1 per
    dialog). Every bus verification message carries its epoch, so a reader bound to one
    verification can tell its own results from a newer verification's."""
    epoch: int
    users: tuple[str, ...]


class DialogBusy(Exception):
    """Another stream already feeds a channel the new stream would feed."""
    code = "DIALOG_BUSY"


# -- the collaborators a dialog uses ----------------------------------------------------------

class EngineSessions(Protocol):
    """The engine, as a dialog sees it (engine.Engine)."""
    def open_session(self, dialog_id: str, limits: SpeechLimits,
                     on_event: Callable[[Any], None]) -> "EngineSession": ...


class CallScorer(Protocol):
    """Verification, as a dialog sees it (gateway/services/verification.py)."""
    async def score_call(self, dialog: "Dialog", emb: Embedding | None, users: list[str],
                         change: SpeakerChange | None, result_type: str = "ONDEMAND",
                         delayed: bool = False) -> list[VerificationRow]: ...

    async def publish_call_event(self, dialog: "Dialog", row: VerificationRow, emb: Embedding | None,
                                 change: SpeakerChange | None) -> None: ...


class CallFraudState(Protocol):
    def push(self, samples: Any) -> None: ...


class CallFraud(Protocol):
    """Fraud signals, as a dialog sees them (gateway/services/fraud.py)."""
    def open(self) -> CallFraudState: ...
    async def on_milestone(self, dialog: "Dialog", kind: MilestoneKind, emb: Embedding) -> None: ...
    async def call_ended(self, dialog: "Dialog") -> None: ...


@dataclass(frozen=True)
class CallServices:
    """Everything a dialog works with; built once per gateway (gateway/services/wiring.py)."""
    engine: EngineSessions
    bus: ResultsBus
    scorer: CallScorer
    fraud: CallFraud
    metrics: "Metrics"
    # Several instances (gateway/calls/cluster.py): this instance's incarnation, which makes
    # every dialog's bus key unique in the cluster. Empty in one process.
    instance: str = ""


class Dialog:
    def __init__(self, services: CallServices, tenant_id: str, dialog_id: str, profile: Profile | None):
        self.services = services
        self.bus = services.bus
        self.metrics = services.metrics
        self.tenant_id = tenant_id
        self.dialog_id = dialog_id
        # The bus key: unique per dialog, since several owners may each have a dialog on one
        # masterId (index 1 stays the dialog id: logs and the live bench read it).
        serial = str(next(_SERIAL))
        self.key = (tenant_id, dialog_id, f"{services.instance}/{serial}" if services.instance else serial)
        self._profile = profile
        self.retired = False
        self.status = CALL_OPENED
        self.status_message = Status(CALL_OPENED)
        self.no_customer_audio = False
        self.mixed = False                    # its customer audio is mixed with the agent's (NICE MIX)
        self.created = time.time()
        self.closed_at: float | None = None
        self._fed: dict[int, frozenset[Channel]] = {}      # attachment id -> the channels it feeds
        self._resume: asyncio.Task | None = None             # a detached stream may come back until then
        self.streamed = False                 # a stream ever fed it (see idle_since)
        self.frames = 0
        self.samples_in = 0
        self.steps = 0                        # dialog_step of vb_verification events
        self.verification: PushVerification | None = None     # the call's push verification
        self.verification_started: BusMessage | None = None   # its STARTING message
        self.verification_latest: BusMessage | None = None    # its latest result message
        self.speaker_change_published = False
        self.log = log.bind(dialog_id=dialog_id)
        self._tasks: set[asyncio.Future] = set()
        self.engine_session = services.engine.open_session(dialog_id, limits_for(profile), self._on_engine_event)
        self.fraud: Any = services.fraud.open()    # fraud signals (gateway/services/fraud.py)
        self.publish_status(CALL_OPENED)

    # -- ownership ---------------------------------------------------------------------------
    @property
    def profile(self) -> Profile | None:
        """The owner (None only for an AudioHook call no one has claimed yet). Read-only."""
        return self._profile

    def _claim(self, profile: Profile) -> None:
        """The registry only: the first authorised session becomes the owner of an unowned call."""
        if self._profile is not None:
            raise RuntimeError("a dialog's owner never changes")
        self._profile = profile
        self.engine_session.set_limits(limits_for(profile))

    def owned_by(self, profile: Profile) -> bool:
        return self._profile is not None and self._profile.id == profile.id

    # -- streams: attach and detach (the gateway side of the stream contract: attach.py) ------
    @property
    def active_streams(self) -> int:
        return len(self._fed)

    def busy(self, channels: frozenset[Channel] = ALL_CHANNELS) -> bool:
        """Whether a stream already feeds one of `channels`."""
        return any(channels & fed for fed in self._fed.values())

    def attach(self, stream_id: int, channels: frozenset[Channel], customer_audio: bool = True,
               mixed: bool = False) -> None:
        """A stream starts feeding `channels` (DialogBusy if another feeds one of them). A
        stream that comes back within the resume time of a detached one (NICE hold/resume)
        continues the call: nothing is closed, nothing published again."""
        if self.busy(channels):
            raise DialogBusy("another stream is already feeding this dialog")
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._fed[stream_id] = channels
        self.mixed = self.mixed or mixed
        self.stream_started(customer_audio)

    async def detach(self, stream_id: int, reason: str, resume_within_s: float = 0.0) -> None:
        """A stream stopped feeding. The last one closes the call (`reason`: NORMAL_ENDS close it
        normally, any other is a SYSTEM_ERROR), at once, or, with `resume_within_s`, only if no
        stream attaches again within that time."""
        if self._fed.pop(stream_id, None) is None:
            return
        if self._fed:
            return
        if resume_within_s > 0:
            self._resume = asyncio.ensure_future(self._end_unless_resumed(reason, resume_within_s))
            return
        # In a task of the dialog's own: the connection's handler may be cancelled once its
        # socket has closed, and the end status must still be published.
        await asyncio.shield(self._spawn(self._end_call(reason)))

    async def _end_unless_resumed(self, reason: str, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        # Nothing came back: the call is over. Its last speech may have come after its last
        # result (a hang-up ends a NICE call this way), so its final results go out first; a
        # stream attaching meanwhile cancels this task and the call carries on.
        try:
            await self.publish_final_unless_said()
        except Exception:                          # noqa: BLE001 - the end must still be published
            self.log.exception("final_results_failed")
        self._resume = None
        if not self._fed:
            await self._spawn(self._end_call(reason))

    @property
    def awaiting_resume(self) -> bool:
        return self._resume is not None

    def stream_started(self, customer_audio: bool = True) -> None:
        """`customer_audio=False` when the stream's media carries no customer (external)
        channel: the statuses then say NO_CUSTOMER_AUDIO."""
        self.streamed = True
        self.closed_at = None
        was = self.no_customer_audio
        self.no_customer_audio = not customer_audio
        if self.status in (CALL_CLOSED, SYSTEM_ERROR) or was != self.no_customer_audio:
            self.publish_status(CALL_OPENED)

    # -- audio in ---------------------------------------------------------------------------
    def push(self, frame: Frame) -> None:
        self.frames += 1
        if frame.channel == "customer":
            self.samples_in += len(frame.samples)
            self.fraud.push(frame.samples)
        self.engine_session.push(frame.channel, frame.samples)
        self.metrics.inc("vbgw_frames_total")

    @property
    def idle_since(self) -> float | None:
        """Since when the dialog has had no audio: its close, or its creation if no stream
        ever fed it (a session that only asked for status or an on-demand verification);
        None while a stream is open or may still come back."""
        if self.active_streams or self._resume is not None:
            return None
        return self.closed_at if self.closed_at is not None else (None if self.streamed else self.created)

    async def _end_call(self, reason: str) -> None:
        await self.drain()
        try:
            await self.services.fraud.call_ended(self)      # fingerprints of the users verified
        except Exception:                              # noqa: BLE001 - the end must still be published
            self.log.exception("fraud_call_end_failed")
        if self.active_streams == 0:
            self.closed_at = time.time()
            self.publish_status(CALL_CLOSED if reason in NORMAL_ENDS else SYSTEM_ERROR, reason=reason)

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
    def publish_status(self, status: str, reason: str | None = None, connector: str | None = None) -> None:
        self.status = status
        if self.no_customer_audio and reason in (None, *NORMAL_ENDS):
            reason = NO_CUSTOMER_AUDIO
        self.status_message = Status(status, reason, connector)
        self.bus.publish(self.key, self.status_message)

    def _on_engine_event(self, event: SpeechProgress | Milestone) -> None:
        """Called on the event loop by the engine."""
        if isinstance(event, SpeechProgress):
            if self.status == CALL_OPENED and event.speech_ms > 0:
                self.publish_status(BIO_ACTIVE)
            enough = self.profile is not None and event.speech_ms >= self.profile.settings.enrol_min_speech_ms
            self.bus.publish(self.key, CleanSpeech(event.speech_ms, enough))
        elif isinstance(event, Milestone):
            change = event.speaker_change
            if change.user_changed and not self.speaker_change_published:
                # Once per call (the flag is sticky): agents need the moment, not a stream.
                self.speaker_change_published = True
                self.bus.publish(self.key, SpeakerChanged(True, change.scd_llr, change.scd_nllr, event.kind,
                                                          event.embedding.speech_ms))
                self.metrics.inc("vbgw_speaker_changes_total")
                self.log.warning("speaker_change", result_type=event.kind)
            self._spawn(self._score_milestone(event))
            self._spawn(self._fraud_milestone(event))

    def _spawn(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _score_milestone(self, m: Milestone, v: PushVerification | None = None) -> None:
        try:
            v = v or self.verification
            if v is None or self.profile is None:
                return
            scorer = self.services.scorer
            scoring_from = time.monotonic()
            results = await scorer.score_call(self, m.embedding, list(v.users), m.speaker_change,
                                              result_type=m.kind, delayed=m.delayed)
            if not self.publish_verification(v, m.kind, results):
                return                              # a newer request replaced this verification meanwhile
            self.metrics.inc("vbgw_results_total", type=m.kind, result=results[0].bio_result)
            if m.arrived is not None:
                # From the moment enough speech had arrived to the result leaving for its clients.
                self.metrics.observe(f"vbgw_{m.kind.lower()}_result_delay_seconds", time.monotonic() - m.arrived)
                # ... of which scoring (voiceprints, calibration, the PAD check): the rest is the engine's
                self.metrics.observe(f"vbgw_{m.kind.lower()}_scoring_seconds", time.monotonic() - scoring_from)
            if m.kind == MilestoneKind.NORMAL:
                await scorer.publish_call_event(self, results[0], m.embedding, m.speaker_change)
        except Exception:
            self.log.exception("milestone_scoring_failed")
            self.publish_status(SYSTEM_ERROR, reason="ENGINE_ERROR")

    async def _fraud_milestone(self, m: Milestone) -> None:
        try:
            await self.services.fraud.on_milestone(self, m.kind, m.embedding)
        except Exception:
            self.log.exception("fraud_signals_failed")

    # -- push verification: one per call ----------------------------------------------------
    def publish_verification(self, v: PushVerification, result_type: str, results: list[VerificationRow],
                             final: bool = False) -> bool:
        """Publish a message of verification `v` (STARTING or results, best first). Results of
        a verification that a newer request replaced are dropped (False): no reader ever gets
        rows of users other than those its verification named."""
        if self.verification is not v:
            return False
        msg = self.bus.publish(self.key, VerificationResults(str(result_type), v.epoch, tuple(results), final,
                                                             self.mixed))
        if result_type == "STARTING":
            self.verification_started, self.verification_latest = msg, None
        else:
            self.verification_latest = msg
        return True

    def verification_snapshot(self) -> list[BusMessage]:
        """What a reader joining the running verification is owed: its STARTING and its latest
        result (if any), whatever the bus history still holds."""
        return [m for m in (self.verification_started, self.verification_latest) if m is not None]

    async def request_verification(self, users: list[str]) -> tuple[PushVerification, bool]:
        """A push verification request from any surface (SSE /verification, Socket.IO
        `verification`, the widget, a connector's automatic verification). A call has one
        verification at a time (docs/live-results.md): a request naming the users already
        under verification joins it (returns it and False: nothing restarts, no reader is
        ended); a request naming other users replaces it (the new one and True): a new epoch,
        its STARTING, which ends every reader of the previous one, and at once the score of
        the speech so far."""
        if self.verification is not None and set(users) == set(self.verification.users):
            return self.verification, False
        v = PushVerification((self.verification.epoch if self.verification else 0) + 1, tuple(users))
        self.verification = v
        self.publish_verification(v, "STARTING", [
            VerificationRow(user_id=u, bio_user_id=u, bio_result="", result_type="STARTING") for u in users])
        # A request made after the speech milestones passed gets the score of the speech so far
        # at once, instead of waiting for the next refinement (or forever, if the call ended).
        if self.profile is not None and self.engine_session.speech_ms >= self.profile.settings.early_speech_ms:
            await self.score_so_far(v)
        return v, True

    async def publish_final_unless_said(self, drain_s: float = 5.0) -> None:
        """The final results of the call's verification (all its speech, `final`), unless its
        latest result already covers all the speech: then they would only repeat it. For calls
        fed by several streams that may each end (NICE: an in-band end, or a hold that never
        resumed), where the agent must never get the same result twice."""
        v = self.verification
        if self.profile is None or v is None or self.no_customer_audio:
            return
        await self.drain(timeout=drain_s)
        latest = self.verification_latest
        if (latest is not None and isinstance(p := latest.payload, VerificationResults) and p.epoch == v.epoch
                and p.results and p.results[0].speech_millis >= self.engine_session.speech_ms):
            return
        if self.verification is v:
            await self.score_so_far(v, final=True)

    def kind_for(self, speech_ms: int) -> MilestoneKind:
        """The one rule for results computed outside the engine's milestones (a late request, a
        call's final results): NORMAL from the profile's verification minimum, EARLY below."""
        assert self.profile is not None
        return MilestoneKind.NORMAL if speech_ms >= self.profile.settings.verify_min_speech_ms else MilestoneKind.EARLY

    async def score_so_far(self, v: PushVerification, final: bool = False) -> None:
        """Verification `v` on all the call's speech so far, by `kind_for`. As a milestone (its
        NORMAL is a vb_verification event); `final`: the call's last results, published with
        `final` (a connector's close: FinalResults in attach.py), even without speech."""
        emb = await self.engine_session.embedding()
        kind = self.kind_for(emb.speech_ms if emb is not None else 0)
        change = self.engine_session.speaker_change
        if not final:
            if emb is not None:
                await self._score_milestone(Milestone(self.dialog_id, kind, emb, change), v)
            return
        results = await self.services.scorer.score_call(self, emb, list(v.users), change, result_type=kind)
        self.publish_verification(v, kind, results, final=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._resume is not None:
            self._resume.cancel()
        await self.engine_session.close()
