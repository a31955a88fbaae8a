"""What agents see live: results-bus messages (typed: gateway/calls/results.py) rendered as the
seeds' payloads, one table per surface (SSE: ocp-vb-standalone-api.txt; Socket.IO:
ocp-vb-socketio-api.txt; the agent widget reads the Socket.IO events).

A new kind reaches Socket.IO clients by adding one row to SOCKETIO_EVENTS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from gateway.calls.dialog import NO_CUSTOMER_AUDIO
from gateway.calls.results import (
    BlocklistResults, CleanSpeech, SpeakerChanged, Status, TtsVerdict, VerificationResults, VerificationRow,
)

if TYPE_CHECKING:
    from gateway.calls.registry import LiveCall

# Statuses after which a call sends nothing more (the dialog-status stream ends on them once
# the call's audio has stopped). ERR_CODE_01..06 come from the AudioHook connector.
ERROR_STATUSES = ("SYSTEM_ERROR", *(f"ERR_CODE_{i:02d}" for i in range(1, 7)))


def _uid(r: VerificationRow) -> str:
    # Push results name the user as the client asked for it (the seed's examples show the
    # requested id, "useridtest", in STARTING, EARLY and NORMAL alike).
    return r.user_id or r.bio_user_id


def status_payload(s: Status) -> dict:
    """The seed's `{"status"}`, plus `reason` with an error status, or NO_CUSTOMER_AUDIO while a
    call's stream carries no customer audio (nothing can be scored; docs/api.md)."""
    out = {"status": s.status}
    if s.reason and (s.status in ERROR_STATUSES or s.reason == NO_CUSTOMER_AUDIO):
        out["reason"] = s.reason
    return out


def _mixed(v: VerificationResults) -> dict:
    # vbgw's extension (not in the seeds): present, and true, only for a call whose customer
    # audio is mixed with the agent's (a NICE MIX stream): scores are less reliable there.
    return {"mixed": True} if v.mixed else {}


def sse_verification(v: VerificationResults) -> list[dict]:
    return [{"bio_result": r.bio_result, "bio_score": r.bio_score, "bio_user_id": _uid(r), "llr": r.llr,
             "result_type": v.result_type, "speech_millis": r.speech_millis, **_mixed(v)} for r in v.results]


def sio_verification(v: VerificationResults) -> list[dict]:
    return [{"limitType": v.result_type, "bioUserId": _uid(r), "bioResult": r.bio_result,
             "bioScore": r.bio_score, "llr": r.llr, "speechMillis": r.speech_millis,
             "errorType": r.error_type, **_mixed(v)} for r in v.results]


def sio_clean_speech(c: CleanSpeech) -> dict:
    return {"enoughSpeechDetected": bool(c.enough_speech), "cleanSpeechDuration": int(c.speech_millis)}


def sio_tts(t: TtsVerdict) -> dict:
    return {"label": t.label, "detectionScore": t.detectionScore}


def sio_blocklist(b: BlocklistResults) -> list[dict]:
    return [{"label": r.label, "status": r.status, "risk_level": r.risk_level,
             "custom_agent_message": r.custom_agent_message, "custom_ui_message": r.custom_ui_message}
            for r in b.results]


def sio_speaker_change(s: SpeakerChanged) -> dict:
    # Not in the seed (which has no live speaker-change event): vbgw's extension, named and
    # cased like the seed's events.
    return {"userChanged": bool(s.user_changed), "scdLlr": s.scd_llr, "scdNllr": s.scd_nllr,
            "speechMillis": s.speech_millis}


@dataclass(frozen=True)
class SioEvent:
    name: str                          # the event is "<name>-<token>"
    render: Callable[[Any], Any]
    audience: str                      # "status" | "verification" | "any": who asked for what


SOCKETIO_EVENTS: dict[str, SioEvent] = {
    Status.kind: SioEvent("status", status_payload, "status"),
    # Every client following the session gets the call's verification (an AudioHook call is
    # verified with no agent request: a status-only client must see it too).
    VerificationResults.kind: SioEvent("verification", sio_verification, "any"),
    CleanSpeech.kind: SioEvent("clean-speech", sio_clean_speech, "any"),
    TtsVerdict.kind: SioEvent("TTS-Detection", sio_tts, "any"),
    BlocklistResults.kind: SioEvent("blocklist-Detection", sio_blocklist, "any"),
    SpeakerChanged.kind: SioEvent("speaker-change", sio_speaker_change, "any"),
}

# Kinds a late joiner is brought up to date with (their latest message, from the bus history).
SNAPSHOT_KINDS = (CleanSpeech.kind, TtsVerdict.kind, BlocklistResults.kind, SpeakerChanged.kind)


def call_over(status: str, dialog: "LiveCall") -> bool:
    """True when `status` ends the call: CALL_CLOSED, or an error status once no audio flows."""
    return status == "CALL_CLOSED" or (status in ERROR_STATUSES and dialog.active_streams == 0
                                       and dialog.closed_at is not None)
