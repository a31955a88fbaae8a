"""Verification: the one scoring path (a live call's speech or an uploaded file's), the
on-demand verification of a call, and the automatic verification a connector starts from the
call's biokeys (AudioHook from the ANI, NICE from its script parameters)."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from engine.types import BandTargets, Embedding, SpeakerChange
from gateway.calls.results import VerificationRow
from gateway.store.base import Profile, Repository

if TYPE_CHECKING:
    from engine import Engine
    from gateway.calls.dialog import Dialog
    from gateway.events.publisher import EventPublisher
    from gateway.infra.metrics import Metrics
    from gateway.services.auth import Keyring
    from gateway.services.users import BiokeyLike, Users

NO_DATA_MS = 500          # below this much net speech nothing is scored
MAX_USERS = 5             # users per verification (on demand, push, automatic)


class LiveFraud(Protocol):
    """Fraud signals on a live call's results (gateway/services/fraud.py)."""
    async def annotate(self, dialog: "Dialog", rows: list[VerificationRow],
                       result_type: str) -> list[VerificationRow]: ...


def band_targets(profile: Profile) -> BandTargets:
    b = profile.settings.bands
    return BandTargets(b.far_high, b.far_medium, b.far_low, b.frr_high, b.frr_medium, b.frr_low)


class Verifier:
    def __init__(self, store: Repository, engine: "Engine", keyring: "Keyring", fraud: LiveFraud,
                 events: "EventPublisher", metrics: "Metrics"):
        self.store = store
        self.engine = engine
        self.keyring = keyring
        self.fraud = fraud
        self.events = events
        self.metrics = metrics

    async def score(self, profile: Profile, emb: Embedding | None, user_ids: list[str],
                    change: SpeakerChange | None, result_type: str = "ONDEMAND", delayed: bool = False,
                    dialog: "Dialog | None" = None, min_speech_ms: int | None = None) -> list[VerificationRow]:
        """Per-user results, best first. With the live call `dialog`, scored rows of on-demand
        and NORMAL results get `pad_detected` (gateway/services/fraud.py); audio uploaded as a
        file has no live fraud signals. `min_speech_ms`: the caller's least speech to score
        instead of the profile's early_speech_ms (the Aculab API's, per user group key)."""
        speech = emb.speech_ms if emb is not None else 0
        need = profile.settings.early_speech_ms if min_speech_ms is None else max(min_speech_ms, NO_DATA_MS)
        vps = await self.store.voiceprints(profile.id, user_ids)
        targets = band_targets(profile)
        out = []
        for uid in user_ids:
            base = VerificationRow(
                user_id=uid, bio_user_id=self.keyring.bio_user_id(profile.id, uid), bio_result="",
                speech_millis=speech, user_changed=bool(change and change.user_changed),
                scd_llr=change.scd_llr if change else None, scd_nllr=change.scd_nllr if change else None,
                result_type=result_type, delayed=delayed)
            vp = vps.get(uid)
            if vp is None or vp.model != self.engine.info.model:
                row = replace(base, bio_result="NOT_SCORED",
                              error_type=await self._not_scored_reason(profile, uid, vp is not None))
            elif emb is None or speech < NO_DATA_MS:
                row = replace(base, bio_result="NO_DATA", error_type="NO_SPEECH")
            elif speech < need:
                row = replace(base, bio_result="LOW_DATA", error_type="NOT_ENOUGH_SPEECH")
            else:
                s = self.engine.score(emb, np.frombuffer(vp.vector, np.float32))
                row = replace(base, bio_score=round(s.bio_score, 4), llr=round(s.llr, 4),
                              llr_norm=round(s.llr_norm, 4), bio_result=self.engine.classify(s.llr, targets),
                              voiceprint_id=vp.id)
            out.append(row)
        out.sort(key=lambda r: (r.voiceprint_id is not None, r.llr), reverse=True)
        if dialog is not None:
            out = await self.fraud.annotate(dialog, out, result_type)
        return out

    async def _not_scored_reason(self, profile: Profile, uid: str, other_model: bool) -> str:
        """Why a user has nothing to score against, as docs/api.md promises: OPTED_OUT,
        RE_ENROLL (a voiceprint of another speaker model) or NOT_ENROLLED."""
        user = await self.store.get_user(profile.id, uid)
        status = user.status if user is not None else "NOT_ENROLLED"
        if status == "OPTED_OUT":
            return "OPTED_OUT"
        if status == "RE_ENROLL" or other_model:
            return "RE_ENROLL"
        return "NOT_ENROLLED"

    # -- a live call (gateway.calls.dialog.CallScorer) ------------------------------------------
    async def score_call(self, dialog: "Dialog", emb: Embedding | None, users: list[str],
                         change: SpeakerChange | None, result_type: str = "ONDEMAND",
                         delayed: bool = False) -> list[VerificationRow]:
        assert dialog.profile is not None
        return await self.score(dialog.profile, emb, users, change, result_type, delayed, dialog=dialog)

    async def publish_call_event(self, dialog: "Dialog", row: VerificationRow, emb: Embedding | None,
                                 change: SpeakerChange | None) -> None:
        """The call's next `vb_verification` (dialog_step counts them per call)."""
        assert dialog.profile is not None
        dialog.steps += 1
        await self.events.verification(dialog.profile, dialog.dialog_id, dialog.steps, row, emb, change,
                                       mixed=dialog.mixed)

    async def ondemand(self, dialog: "Dialog", user_ids: list[str]) -> VerificationRow:
        """One verification of the call's speech so far: the best of `user_ids` (no audio yet:
        NO_DATA, honestly), published as a vb_verification event."""
        emb = await dialog.engine_session.embedding()
        change = dialog.engine_session.speaker_change
        best = (await self.score_call(dialog, emb, user_ids, change))[0]
        await self.publish_call_event(dialog, best, emb, change)
        self.metrics.inc("vbgw_verifications_total", result=best.bio_result)
        return best

    # -- automatic verification ----------------------------------------------------------------
    async def start_automatic(self, dialog: "Dialog", users: list[str], biokeys: "Sequence[BiokeyLike]",
                              search: "Users") -> list[str]:
        """A connector's automatic verification (AudioHook from customConfig or the caller's ANI;
        NICE from its script parameters): `users` as named, else the ENROLLED users the biokeys
        find, at most MAX_USERS. Started only if no verification runs on the call (an agent's
        request is never replaced by it). Returns the users (empty: none started)."""
        profile = dialog.profile
        if profile is None or dialog.verification is not None:
            return []
        users = users[:MAX_USERS]
        if not users and biokeys:
            found = await search.search(profile, biokeys)
            users = [u.user_id for u in found if u.status == "ENROLLED"][:MAX_USERS]
        if users and dialog.verification is None:
            await dialog.request_verification(users)
            return users
        return []

