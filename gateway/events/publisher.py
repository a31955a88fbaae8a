"""The one publisher of `vb_enrolment` and `vb_verification` events (models: gateway/events/
models.py; sinks: gateway/events/sinks.py), for every path that enrols or verifies: a live call,
an uploaded file, the Aculab Users API."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.types import Embedding, ModelInfo, SpeakerChange
from gateway.events.models import (
    Biokey, EnrolledUser, VbEnrolmentEvent, VbVerificationEvent, VerificationEnrolledUser, VerificationResult,
    VoiceprintBlock,
)
from gateway.events.sinks import EventSink, EventsConfig
from gateway.infra.clock import now_ms
from gateway.store.base import Profile, Repository, StoredBiokey, User

if TYPE_CHECKING:
    from gateway.calls.results import VerificationRow

AGENT_SIDE = "Agent Side"      # origin of what an agent's session did


class EventPublisher:
    def __init__(self, sink: EventSink, cfg: EventsConfig, info: ModelInfo, store: Repository):
        self.sink = sink
        self.cfg = cfg
        self.info = info
        self.store = store
        self._names: dict[str, str] = {}

    async def tenant_name(self, tenant_id: str) -> str:
        if tenant_id not in self._names:
            t = await self.store.get_tenant(tenant_id)
            self._names[tenant_id] = t.name if t else ""
        return self._names[tenant_id]

    async def group_name(self, group_id: str) -> str:
        if group_id not in self._names:
            g = await self.store.get_group(group_id)
            self._names[group_id] = g.name if g else ""
        return self._names[group_id]

    async def enrolment(self, profile: Profile, uid: str, stored: list[StoredBiokey], dialog_id: str,
                        session_id: str, origin: str, user: User | None, emb: Embedding | None, *,
                        voiceprint_id: int | None, creation_ts: int, fail_reason: str | None = None) -> None:
        """`vb_enrolment` of a voiceprint built (voiceprint_id) or not (fail_reason)."""
        info = self.info
        await self.sink.publish(VbEnrolmentEvent(
            region=self.cfg.region, vb_version=self.cfg.vb_version,
            dialog_id=dialog_id, session_id=session_id, origin=origin,
            group_name=await self.group_name(profile.group_id),
            enrolled_user=EnrolledUser(user_id=uid, organization_name=await self.tenant_name(profile.tenant_id),
                                       user_creation_ts=user.created_ms if user else None,
                                       opted_out=bool(user and user.status == "OPTED_OUT"),
                                       optout_ts=user.opt_out_ts if user else None,
                                       optin_ts=user.opt_in_ts if user else None),
            biokeys=[Biokey(key=b.key, value=b.value) for b in stored],
            profile_id=profile.id,
            voiceprint=VoiceprintBlock(voiceprint_id=voiceprint_id, creation_ts=creation_ts,
                                       extractor_version=info.extractor_version, method=info.method,
                                       model=info.model, plda_version=info.plda_version,
                                       speech_frames=emb.speech_frames if emb is not None else 0,
                                       sw_version=info.sw_version, vp_fail=fail_reason is not None,
                                       vp_fail_reason=fail_reason)))

    async def verification(self, profile: Profile, dialog_id: str, step: int, r: "VerificationRow",
                           emb: Embedding | None, change: SpeakerChange | None, origin: str = AGENT_SIDE,
                           mixed: bool = False) -> None:
        """`vb_verification` of one result (the best of a verification). `mixed`: the call's
        customer audio was mixed with the agent's (NICE MIX)."""
        info = self.info
        scored = r.voiceprint_id is not None
        await self.sink.publish(VbVerificationEvent(
            region=self.cfg.region, vb_version=self.cfg.vb_version,
            dialog_id=dialog_id, dialog_step=step,
            enrolled_user=VerificationEnrolledUser(user_id=r.user_id,
                                                   organization_name=await self.tenant_name(profile.tenant_id)),
            group_name=await self.group_name(profile.group_id),
            voiceprint_ids=[r.voiceprint_id] if r.voiceprint_id is not None else [],
            profile_id=profile.id, verification_id=await self.store.next_verification_id(),
            extractor_version=info.extractor_version, frame_count=emb.speech_frames if emb else 0,
            llr=r.llr if scored else None, method=info.method, model=info.model,
            llr_norm=r.llr_norm if scored else None,
            plda_version=info.plda_version,
            verification_score=r.bio_score if scored else None,
            sw_version=info.sw_version, verification_ts=now_ms(), user_changed=r.user_changed,
            verification_result=VerificationResult(r.bio_result),
            fail_reason="OK" if r.error_type is None else r.error_type,
            scd_llr=change.scd_llr if change else None, scd_nllr=change.scd_nllr if change else None,
            verification_origin=origin, non_target=False, mixed=mixed))
