"""Wire models of the OCP standalone Voice Biometrics API (seed: ocp-vb-standalone-api.txt).
Field names are the contract; the OpenAPI document is generated from these models."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.store.base import BiokeyStr, UserStatus

Id = Annotated[str, Field(min_length=1, max_length=256)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TokenRequest(_In):
    agentId: Id
    agentSkill: Id
    masterId: Id = Field(description="The call's dialog id (Genesys Call.ConversationID, NICE contact id)")
    tenantId: Id = Field(description="Tenant name or id")
    vbProfile: Id = Field(description="VB profile name or id")
    ccaasProvider: Id = Field(description="e.g. GENESYS, NICE_IN_CONTACT, OTHER")
    customProperties: dict[str, str] = Field(default_factory=dict, max_length=50,
                                             description="Biokeys already known, e.g. {\"Ani\": \"+123\"}")


class TokenData(BaseModel):
    token: str


class TokenResponse(BaseModel):
    data: TokenData


class UserInfo(BaseModel):
    user_id: str
    status: UserStatus
    last_update: int | None
    opt_out_ts: int | None
    opt_in_ts: int | None


class BiokeyIn(_In):
    key: BiokeyStr
    value: BiokeyStr
    is_user_id: bool = False


class SearchRequest(_In):
    biokeys: list[BiokeyIn] = Field(min_length=1, max_length=20)


SearchStatus = Literal["FOUND_ONE", "FOUND_MANY", "NOT_FOUND"]


class SearchResponse(BaseModel):
    users: list[UserInfo]
    response_status: SearchStatus


class EnrolRequest(_In):
    biokeys: list[BiokeyIn] = Field(default_factory=list, max_length=20)
    user_id: BiokeyStr | None = None
    opt_in: bool = Field(default=False, description="Explicit opt-in; required to enrol a user who opted out")


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
