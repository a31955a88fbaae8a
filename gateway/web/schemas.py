"""Wire models of the OCP standalone Voice Biometrics API (seed: ocp-vb-standalone-api.txt).
Field names are the contract; the OpenAPI document is generated from these models."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.store.base import BiokeyStr

_ID = dict(min_length=1, max_length=256)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TokenRequest(_In):
    agentId: str = Field(**_ID)
    agentSkill: str = Field(**_ID)
    masterId: str = Field(description="The call's dialog id (Genesys Call.ConversationID, NICE contact id)", **_ID)
    tenantId: str = Field(description="Tenant name or id", **_ID)
    vbProfile: str = Field(description="VB profile name or id", **_ID)
    ccaasProvider: str = Field(description="e.g. GENESYS, NICE_IN_CONTACT, OTHER", **_ID)
    customProperties: dict[str, str] = Field(default_factory=dict, max_length=50,
                                             description="Biokeys already known, e.g. {\"Ani\": \"+123\"}")


class TokenData(BaseModel):
    token: str


class TokenResponse(BaseModel):
    data: TokenData


class UserInfo(BaseModel):
    user_id: str
    status: Literal["ENROLLED", "NOT_ENROLLED", "OPTED_OUT", "RE_ENROLL"]
    last_update: int | None
    opt_out_ts: int | None
    opt_in_ts: int | None


class BiokeyIn(_In):
    key: BiokeyStr
    value: BiokeyStr
    is_user_id: bool = False


class SearchRequest(_In):
    biokeys: list[BiokeyIn] = Field(min_length=1, max_length=20)


class SearchResponse(BaseModel):
    users: list[UserInfo]
    response_status: Literal["FOUND_ONE", "FOUND_MANY", "NOT_FOUND"]


class EnrolRequest(_In):
    biokeys: list[BiokeyIn] = Field(default_factory=list, max_length=20)
    user_id: BiokeyStr | None = None
    opt_in: bool = Field(False, description="Explicit opt-in; required to enrol a user who opted out")


class UserIdRequest(_In):
    user_id: BiokeyStr


class DataMessage(BaseModel):
    data: str


class OnDemandResponse(BaseModel):
    bio_result: str
    bio_score: float
    bio_user_id: str
    bio_plain_user_id: str
    error_type: str | None
    user_changed: bool
    speech_millis: int


class VerificationResultItem(BaseModel):
    bio_result: str
    bio_score: float
    bio_user_id: str
    llr: float
    result_type: Literal["STARTING", "EARLY", "NORMAL"]
    speech_millis: int


class BatchEnrolResponse(BaseModel):
    data: str
    user_id: str
    speech_millis: int
