"""What agents see live: results-bus messages rendered as the seeds' payloads, one table per
surface (SSE: ocp-vb-standalone-api.txt; Socket.IO: ocp-vb-socketio-api.txt).

Bus payloads each renderer expects (publishers: gateway/dialogs.py, and the fraud-signal
detectors for "tts" and "blocklist"):

    status        {"status": CALL_OPENED|BIO_ACTIVE|SYSTEM_ERROR|CALL_CLOSED|ERR_CODE_01..06,
                   "reason"?: str}
    clean_speech  {"speech_millis": int, "enough_speech": bool}
    verification  {"result_type": STARTING|EARLY|NORMAL, "epoch": int, "results": [{"user_id",
                   "bio_result", "bio_score", "llr", "speech_millis", "error_type", ...}, ...]}
                  (best first; `epoch` numbers the call's verifications, see
                  Dialog.request_verification)
    tts           {"label": str, "detectionScore": float}
    blocklist     {"results": [{"label", "status", "risk_level", "custom_agent_message",
                   "custom_ui_message"}, ...]}

A new kind reaches Socket.IO clients by adding one row to SOCKETIO_EVENTS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gateway.calls.dialog import NO_CUSTOMER_AUDIO

# Statuses after which a call sends nothing more (the dialog-status stream ends on them once
# the call's audio has stopped). ERR_CODE_01..06 come from the AudioHook connector.
ERROR_STATUSES = ("SYSTEM_ERROR", *(f"ERR_CODE_{i:02d}" for i in range(1, 7)))
BLOCKLIST_FIELDS = ("label", "status", "risk_level", "custom_agent_message", "custom_ui_message")


def _uid(r: dict) -> str:
    # Push results name the user as the client asked for it (the seed's examples show the
    # requested id, "useridtest", in STARTING, EARLY and NORMAL alike).
    return r.get("user_id") or r["bio_user_id"]


def status_payload(d: dict) -> dict:
    """The seed's `{"status"}`, plus `reason` with an error status, or NO_CUSTOMER_AUDIO while a
    call's stream carries no customer audio (nothing can be scored; docs/api.md)."""
    out = {"status": d["status"]}
    reason = d.get("reason")
    if reason and (d["status"] in ERROR_STATUSES or reason == NO_CUSTOMER_AUDIO):
        out["reason"] = reason
    return out


def sse_verification(d: dict) -> list[dict]:
    return [{"bio_result": r["bio_result"], "bio_score": r["bio_score"], "bio_user_id": _uid(r), "llr": r["llr"],
             "result_type": d["result_type"], "speech_millis": r["speech_millis"]} for r in d["results"]]


def sio_verification(d: dict) -> list[dict]:
    return [{"limitType": d["result_type"], "bioUserId": _uid(r), "bioResult": r["bio_result"],
             "bioScore": r["bio_score"], "llr": r["llr"], "speechMillis": r["speech_millis"],
             "errorType": r.get("error_type")} for r in d["results"]]


def sio_clean_speech(d: dict) -> dict:
    return {"enoughSpeechDetected": bool(d["enough_speech"]), "cleanSpeechDuration": int(d["speech_millis"])}


def sio_tts(d: dict) -> dict:
    return {"label": d["label"], "detectionScore": d["detectionScore"]}


def sio_blocklist(d: dict) -> list[dict]:
    return [{k: r.get(k) for k in BLOCKLIST_FIELDS} for r in d["results"]]


def sio_speaker_change(d: dict) -> dict:
    # Not in the seed (which has no live speaker-change event): vbgw's extension, named and
    # cased like the seed's events.
    return {"userChanged": bool(d["user_changed"]), "scdLlr": d["scd_llr"], "scdNllr": d["scd_nllr"],
            "speechMillis": d["speech_millis"]}


@dataclass(frozen=True)
class SioEvent:
    name: str                          # the event is "<name>-<token>"
    render: Callable[[dict], Any]
    audience: str                      # "status" | "verification" | "any": who asked for what


SOCKETIO_EVENTS: dict[str, SioEvent] = {
    "status": SioEvent("status", status_payload, "status"),
    # Every client following the session gets the call's verification (an AudioHook call is
    # verified with no agent request: a status-only client must see it too).
    "verification": SioEvent("verification", sio_verification, "any"),
    "clean_speech": SioEvent("clean-speech", sio_clean_speech, "any"),
    "tts": SioEvent("TTS-Detection", sio_tts, "any"),
    "blocklist": SioEvent("blocklist-Detection", sio_blocklist, "any"),
    "speaker_change": SioEvent("speaker-change", sio_speaker_change, "any"),
}

# Kinds a late joiner is brought up to date with (their latest message, from the bus history).
SNAPSHOT_KINDS = ("clean_speech", "tts", "blocklist", "speaker_change")


def call_over(status: str, dialog) -> bool:
    """True when `status` ends the call: CALL_CLOSED, or an error status once no audio flows."""
    return status == "CALL_CLOSED" or (status in ERROR_STATUSES and dialog.active_streams == 0
                                       and dialog.closed_at is not None)
