"""OCP-style Voice Biometrics events (``vb_enrolment``, ``vb_verification``): the models.

They follow the seed contract (``ocp-vb-event-schemas``) field for field:
``model_dump(mode="json")`` gives exactly the seed's JSON keys and nesting. Timestamps
are unix epoch milliseconds (ints).

Two decisions the seed leaves open, fixed here (see docs/events.md):

* ``fail_reason`` on ``vb_verification``: the seed's table says "If no failure, then the
  value is OK" while its example shows ``null``. We follow the table: the default and the
  value the gateway emits for a successful verification is ``"OK"``. The type still
  accepts ``None`` so events produced by other emitters parse.
* ``region`` on ``vb_verification``: listed in the seed's table but missing from its
  example JSON. We follow the table and always emit it.

Where they go: gateway/events/sinks.py; who builds them: gateway/events/publisher.py."""
from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

_STRICT = ConfigDict(extra="forbid")


class VerificationResult(str, enum.Enum):
    """The seed's ``verification_result`` enumeration."""

    NO_DATA = "NO_DATA"
    LOW_DATA = "LOW_DATA"
    NOT_SCORED = "NOT_SCORED"
    OK_TMP = "OK_TMP"
    FALSE_HIGH = "FALSE_HIGH"
    FALSE_MEDIUM = "FALSE_MEDIUM"
    FALSE_LOW = "FALSE_LOW"
    TRUE_HIGH = "TRUE_HIGH"
    TRUE_MEDIUM = "TRUE_MEDIUM"
    TRUE_LOW = "TRUE_LOW"
    ERROR = "ERROR"


class EnrolledUser(BaseModel):
    """``enrolled_user`` block of ``vb_enrolment``."""

    model_config = _STRICT

    user_id: str
    organization_name: str = ""
    user_creation_ts: int | None = None  # unix ms
    opted_out: bool = False
    optout_ts: int | None = None  # unix ms
    optin_ts: int | None = None  # unix ms


class Biokey(BaseModel):
    """One ``biokeys`` entry. ``value`` is personal data (e.g. an ANI): never log it."""

    model_config = _STRICT

    key: str
    value: str

    def __repr__(self) -> str:  # keep values out of accidental reprs/log lines
        return f"Biokey(key={self.key!r}, value=<redacted>)"

    __str__ = __repr__


class VoiceprintBlock(BaseModel):
    """``voiceprint`` block of ``vb_enrolment``."""

    model_config = _STRICT

    voiceprint_id: int | None  # null when the build failed (vp_fail): nothing was stored
    creation_ts: int  # unix ms
    extractor_version: str = ""
    method: str = ""
    model: str = ""
    plda_version: str = ""
    speech_frames: int = 0
    sw_version: str = ""
    vp_fail: bool = False
    vp_fail_reason: str | None = None  # null when the build succeeded


class VbEnrolmentEvent(BaseModel):
    """``vb_enrolment``: emitted after an enrolment (voiceprint build) is committed."""

    model_config = _STRICT

    message_type: Literal["vb_enrolment"] = "vb_enrolment"
    region: str = "local"
    vb_version: str = "6.8.0"
    dialog_id: str
    session_id: str = ""
    origin: str = ""
    group_name: str = ""
    enrolled_user: EnrolledUser
    biokeys: list[Biokey] = Field(default_factory=list)
    profile_id: str = ""
    voiceprint: VoiceprintBlock


class VerificationEnrolledUser(BaseModel):
    """``enrolled_user`` block of ``vb_verification`` (user_id and organization_name only)."""

    model_config = _STRICT

    user_id: str = ""
    organization_name: str = ""


class VbVerificationEvent(BaseModel):
    """``vb_verification``: emitted for each NORMAL result and each on-demand verification."""

    model_config = _STRICT

    message_type: Literal["vb_verification"] = "vb_verification"
    region: str = "local"
    vb_version: str = "6.8.0"
    dialog_id: str
    dialog_step: int = 0
    enrolled_user: VerificationEnrolledUser = Field(default_factory=VerificationEnrolledUser)
    group_name: str = ""
    voiceprint_ids: list[int] = Field(default_factory=list)
    profile_id: str = ""
    verification_id: int
    extractor_version: str = ""
    frame_count: int = 0
    llr: float | None = None
    method: str = ""
    model: str = ""
    llr_norm: float | None = None
    plda_version: str = ""
    verification_score: float | None = None
    sw_version: str = ""
    verification_ts: int  # unix ms
    user_changed: bool = False
    verification_result: VerificationResult
    # Seed table: "If no failure, then the value is OK" (the example's null is accepted too).
    fail_reason: str | None = "OK"
    scd_llr: float | None = None
    scd_nllr: float | None = None
    verification_origin: str | None = None
    non_target: bool = False
    # vbgw's extension (not in the seed): true when the call's customer audio was mixed with the
    # agent's (a NICE CXone MIX stream). Written only when true, so every other event is the
    # seed's JSON exactly (docs/events.md).
    mixed: bool = False

    @model_serializer(mode="wrap")
    def _without_unmixed(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("mixed"):
            data.pop("mixed", None)
        return data


EVENT_TYPES: dict[str, type[BaseModel]] = {
    "vb_enrolment": VbEnrolmentEvent,
    "vb_verification": VbVerificationEvent,
}


