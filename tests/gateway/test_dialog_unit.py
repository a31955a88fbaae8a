"""A dialog on its own: built with fakes for every collaborator (no engine, no store, no server),
driven through EARLY, NORMAL and the call's close, and through the stream contract's attach,
busy check per channel, and a detach that waits for the stream to come back (issue #13; the
seams NICE hold/resume uses, issue #14)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from connectors.base import Frame
from engine.types import Embedding, Milestone, MilestoneKind, SpeakerChange, SpeechLimits, SpeechProgress
from gateway.calls.attach import attach
from gateway.calls.bus import LocalResultsBus
from gateway.calls.dialog import CallServices, Dialog, DialogBusy
from gateway.calls.results import (
    CleanSpeech, Status, VerificationResults, VerificationRow, result_from_json,
)
from gateway.infra.metrics import Metrics
from gateway.store.base import Profile, ProfileSettings

NO_CHANGE = SpeakerChange(False, None, None)


class FakeEngineSession:
    """What a dialog asks of its engine session; the test plays the engine's events."""

    def __init__(self, on_event):
        self.on_event = on_event
        self.pushed: list[tuple[str, int]] = []
        self.speech_ms = 0
        self.speaker_change = NO_CHANGE
        self.pending_s = 0.0
        self.closed = False

    def set_limits(self, limits: SpeechLimits) -> None:
        self.limits = limits

    def push(self, channel, samples) -> None:
        self.pushed.append((channel, len(samples)))

    async def embedding(self):
        return embedding(self.speech_ms) if self.speech_ms else None

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


class FakeEngine:
    def __init__(self):
        self.sessions: list[FakeEngineSession] = []

    def open_session(self, dialog_id, limits, on_event):
        s = FakeEngineSession(on_event)
        self.sessions.append(s)
        return s


class FakeScorer:
    """Scores every user TRUE_HIGH once there is speech; records the events it would publish."""

    def __init__(self):
        self.events: list[tuple[str, str, int]] = []

    async def score_call(self, dialog, emb, users, change, result_type="ONDEMAND", delayed=False):
        speech = emb.speech_ms if emb is not None else 0
        return [VerificationRow(user_id=u, bio_user_id="h-" + u, bio_result="TRUE_HIGH" if speech else "NO_DATA",
                                llr=5.0, speech_millis=speech, result_type=result_type,
                                voiceprint_id=1 if speech else None) for u in users]

    async def publish_call_event(self, dialog, row, emb, change):
        dialog.steps += 1
        self.events.append((dialog.dialog_id, row.bio_result, dialog.steps))


class FakeFraudState:
    def __init__(self):
        self.samples = 0

    def push(self, samples) -> None:
        self.samples += len(samples)


class FakeFraud:
    def __init__(self):
        self.milestones: list[str] = []
        self.ended = 0

    def open(self):
        return FakeFraudState()

    async def on_milestone(self, dialog, kind, emb) -> None:
        self.milestones.append(str(kind))

    async def call_ended(self, dialog) -> None:
        self.ended += 1


def embedding(speech_ms: int) -> Embedding:
    return Embedding(np.ones(4, np.float32) / 2, speech_ms, "fake")


def profile() -> Profile:
    return Profile("p1", "t1", "g1", "retail", ProfileSettings())


@pytest.fixture
def parts():
    bus = LocalResultsBus()
    engine, scorer, fraud = FakeEngine(), FakeScorer(), FakeFraud()
    services = CallServices(engine=engine, bus=bus, scorer=scorer, fraud=fraud, metrics=Metrics())
    return services, engine, scorer, fraud, bus


def messages(bus: LocalResultsBus, d: Dialog) -> list:
    return [m.payload for m in bus.recent(d.key)]


async def settle(d: Dialog) -> None:
    """Let the dialog's own tasks (scoring, fraud, the end of the call) finish."""
    while d._tasks:
        await asyncio.gather(*list(d._tasks))


async def test_a_dialog_with_fakes_goes_through_early_normal_and_close(parts):
    services, engine, scorer, fraud, bus = parts
    d = Dialog(services, "t1", "call-1", profile())
    session = engine.sessions[0]
    port = attach(d, connector="test", metrics=services.metrics)
    port.push(Frame("call-1", "customer", 0, np.zeros(160, np.int16)))
    port.push(Frame("call-1", "agent", 0, np.zeros(160, np.int16)))
    assert session.pushed == [("customer", 160), ("agent", 160)] and d.fraud.samples == 160

    v, started = await d.request_verification(["cust-1"])
    assert started and v.epoch == 1
    session.on_event(SpeechProgress("call-1", 1200))
    s = profile().settings
    session.speech_ms = s.early_speech_ms
    session.on_event(Milestone("call-1", MilestoneKind.EARLY, embedding(s.early_speech_ms), NO_CHANGE))
    await settle(d)
    session.speech_ms = s.verify_min_speech_ms
    session.on_event(Milestone("call-1", MilestoneKind.NORMAL, embedding(s.verify_min_speech_ms), NO_CHANGE))
    await settle(d)
    await port.end("completed")
    await settle(d)

    got = messages(bus, d)
    assert [m.status for m in got if isinstance(m, Status)] == ["CALL_OPENED", "BIO_ACTIVE", "CALL_CLOSED"]
    assert [m.result_type for m in got if isinstance(m, VerificationResults)] == ["STARTING", "EARLY", "NORMAL"]
    assert [m for m in got if isinstance(m, CleanSpeech)] == [CleanSpeech(1200, False)]
    normal = [m for m in got if isinstance(m, VerificationResults)][-1]
    assert normal.epoch == 1 and normal.results[0].bio_result == "TRUE_HIGH"
    assert normal.results[0].speech_millis == s.verify_min_speech_ms
    assert scorer.events == [("call-1", "TRUE_HIGH", 1)]          # NORMAL is a vb_verification; EARLY is not
    assert fraud.milestones == ["EARLY", "NORMAL"] and fraud.ended == 1
    assert d.active_streams == 0 and d.idle_since is not None
    # every message crosses processes as JSON and comes back equal (a shared bus, issue #17)
    assert all(result_from_json(m.to_json()) == m for m in got)
    await d.close()
    assert session.closed


async def test_the_busy_check_is_per_channel(parts):
    services = parts[0]
    d = Dialog(services, "t1", "call-2", profile())
    customer = attach(d, connector="test", metrics=services.metrics, channels=frozenset({"customer"}))
    agent = attach(d, connector="test", metrics=services.metrics, channels=frozenset({"agent"}))
    with pytest.raises(DialogBusy):
        attach(d, connector="test", metrics=services.metrics)          # the whole call: both are fed
    assert d.active_streams == 2 and d.busy(frozenset({"customer"}))
    await customer.end("completed")
    assert d.status != "CALL_CLOSED"                                   # the agent's stream still feeds it
    await agent.end("completed")
    await settle(d)
    assert d.status == "CALL_CLOSED"


async def test_a_detached_stream_that_comes_back_in_time_continues_the_call(parts):
    services, _, _, _, bus = parts
    d = Dialog(services, "t1", "call-3", profile())
    first = attach(d, connector="test", metrics=services.metrics)
    await first.end("disconnected", resume_within_s=30)
    assert d.awaiting_resume and d.idle_since is None and d.status == "CALL_OPENED"
    again = attach(d, connector="test", metrics=services.metrics)      # the resume: the same dialog
    assert not d.awaiting_resume
    await again.end("completed")
    await settle(d)
    statuses = [m.status for m in messages(bus, d) if isinstance(m, Status)]
    assert statuses == ["CALL_OPENED", "CALL_CLOSED"]                  # nothing repeated, nothing lost


async def test_a_detached_stream_that_does_not_come_back_closes_the_call(parts):
    services, _, _, _, bus = parts
    d = Dialog(services, "t1", "call-4", profile())
    port = attach(d, connector="test", metrics=services.metrics)
    await port.end("disconnected", resume_within_s=0.01)
    resume = d._resume
    assert resume is not None
    await resume
    await settle(d)
    assert [m.status for m in messages(bus, d) if isinstance(m, Status)] == ["CALL_OPENED", "CALL_CLOSED"]
    assert d.idle_since is not None


async def test_final_results_follow_the_one_rule(parts):
    services, engine, _, _, bus = parts
    d = Dialog(services, "t1", "call-5", profile())
    port = attach(d, connector="test", metrics=services.metrics)
    await d.request_verification(["cust-1"])
    engine.sessions[0].speech_ms = profile().settings.early_speech_ms        # less than NORMAL needs
    await port.finish()
    final = [m for m in messages(bus, d) if isinstance(m, VerificationResults)][-1]
    assert final.final and final.result_type == "EARLY"
