"""What a call publishes on the results bus, as types: the one schema every surface renders
(SSE, Socket.IO, the widget through Socket.IO, events, benchmarks) and every publisher fills
(the dialog, its fraud signals).

Each message is a frozen, slotted dataclass: cheap to build on the hot path (a call publishes a
few per second), immutable once published (a renderer cannot change what another renderer
sees: `pad_detected` is a field filled before publication, not a key added afterwards). `kind`
names the message on the bus and in JSON; `to_dict()` is the message's JSON object (the field
names are the bus's, unchanged since the untyped dicts), and `to_json()` / `result_from_json()`
carry a message between processes (a shared bus of several gateway instances, issue #17).

Renderers (gateway/web/live.py) turn these into the seeds' wire shapes; nothing here knows them."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Union


class _Message:
    """JSON for the flat messages and rows: every field, None included, in declaration order."""
    __slots__ = ()
    kind: ClassVar[str] = ""
    _optional: ClassVar[tuple[str, ...]] = ()     # fields left out of the JSON while None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):                       # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in self._optional:
                continue
            out[f.name] = v.to_dict() if isinstance(v, _Message) else \
                [r.to_dict() for r in v] if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}        # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **self.to_dict()}, separators=(",", ":"))


# -- call status ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Status(_Message):
    """The call's status (CALL_OPENED, BIO_ACTIVE, SYSTEM_ERROR, CALL_CLOSED, a connector's own
    ERR_CODE_xx) and why; `connector` names the connector that reported an error of its own."""
    kind: ClassVar[str] = "status"
    _optional: ClassVar[tuple[str, ...]] = ("reason", "connector")
    status: str
    reason: str | None = None
    connector: str | None = None


@dataclass(frozen=True, slots=True)
class CleanSpeech(_Message):
    """The call's net customer speech so far, and whether it is enough to enrol."""
    kind: ClassVar[str] = "clean_speech"
    speech_millis: int
    enough_speech: bool


# -- verification -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VerificationRow(_Message):
    """One user's result. `bio_result` is a band (TRUE_*/FALSE_*), NO_DATA, LOW_DATA,
    NOT_SCORED, or "" in a STARTING row; `error_type` says why nothing was scored;
    `voiceprint_id` is None when nothing was scored. `pad_detected` ({"type": "TypeA"|...},
    or None) is filled for scored on-demand and NORMAL rows of a live call (gateway/services/
    fraud.py)."""
    user_id: str
    bio_user_id: str
    bio_result: str
    bio_score: float = 0.0
    llr: float = 0.0
    llr_norm: float = 0.0
    speech_millis: int = 0
    error_type: str | None = None
    user_changed: bool = False
    scd_llr: float | None = None
    scd_nllr: float | None = None
    voiceprint_id: int | None = None
    result_type: str = "ONDEMAND"
    delayed: bool = False
    pad_detected: dict[str, str] | None = None

    @property
    def scored(self) -> bool:
        return self.voiceprint_id is not None


@dataclass(frozen=True, slots=True)
class VerificationResults(_Message):
    """A message of the call's push verification number `epoch` (Dialog.request_verification):
    STARTING, or results (EARLY, NORMAL), best first. `final`: the last results of a call that a
    connector closed (AudioHook). `mixed`: the customer audio was mixed with the agent's (a NICE
    MIX stream, issue #14): renderers may say so."""
    kind: ClassVar[str] = "verification"
    _optional: ClassVar[tuple[str, ...]] = ()
    result_type: str
    epoch: int
    results: tuple[VerificationRow, ...]
    final: bool = False
    mixed: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerificationResults:
        return cls(data["result_type"], data["epoch"], tuple(VerificationRow.from_dict(r) for r in data["results"]),
                   bool(data.get("final", False)), bool(data.get("mixed", False)))


# -- fraud signals ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TtsVerdict(_Message):
    """The synthetic-speech detector on the call so far, at a milestone. `model` is the weights
    file's id (TtsDetector.version, e.g. "tts-frame-mlp-2026-11-30"): which detector gave the
    score, for logs, benchmarks and a shared bus; the seed's TTS-Detection payload does not
    carry it (gateway/web/live.py)."""
    kind: ClassVar[str] = "tts"
    label: str
    detectionScore: float            # noqa: N815 - the seed's name, kept on the bus as in the payload
    result_type: str = ""
    speech_frames: int = 0
    model: str = ""


@dataclass(frozen=True, slots=True)
class BlocklistRow(_Message):
    """One active blocklist's verdict: the seed's fields, and for logs and benchmarks the list,
    its best entry on a MATCH and the best llr."""
    label: str
    status: str
    risk_level: str
    custom_agent_message: str
    custom_ui_message: str
    blocklist_id: str = ""
    blocklist_name: str = ""
    entry_id: int | None = None
    llr: float | None = None


@dataclass(frozen=True, slots=True)
class BlocklistResults(_Message):
    """The call's customer voice against every active blocklist of its group, MATCH rows first."""
    kind: ClassVar[str] = "blocklist"
    results: tuple[BlocklistRow, ...]
    result_type: str = ""
    speech_millis: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlocklistResults:
        return cls(tuple(BlocklistRow.from_dict(r) for r in data["results"]), data.get("result_type", ""),
                   data.get("speech_millis", 0))


@dataclass(frozen=True, slots=True)
class SpeakerChanged(_Message):
    """The caller's voice changed within the call (once per call: the moment, not a stream)."""
    kind: ClassVar[str] = "speaker_change"
    user_changed: bool
    scd_llr: float | None
    scd_nllr: float | None
    result_type: str
    speech_millis: int


Result = Union[Status, CleanSpeech, VerificationResults, TtsVerdict, BlocklistResults, SpeakerChanged]
RESULT_TYPES: dict[str, Any] = {t.kind: t for t in (Status, CleanSpeech, VerificationResults, TtsVerdict,
                                                       BlocklistResults, SpeakerChanged)}


def result_from_json(text: str) -> Result:
    """A message from its to_json() form (KeyError for an unknown kind)."""
    data = json.loads(text)
    return RESULT_TYPES[data.pop("kind")].from_dict(data)
