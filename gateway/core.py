"""The gateway's business logic, shared by every surface (REST, SSE, Socket.IO, connectors).
HTTP handlers parse and render; this module decides."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from engine import Engine
from engine.types import BandTargets, Embedding, SpeakerChange
from gateway.api.schemas import BiokeyIn, TokenRequest
from gateway.auth import HASHED_PREFIX, Authenticator, Keyring, new_session_token, token_hash
from gateway.bus import ResultsBus
from gateway.config import Settings
from gateway.dialogs import Dialog, DialogRegistry
from gateway.errors import ApiError, forbidden, not_found
from gateway.events import (
    Biokey, EnrolledUser, EventSink, VbEnrolmentEvent, VbVerificationEvent, VerificationEnrolledUser,
    VoiceprintBlock,
)
from gateway.files import DIR_MODE, tighten, tighten_tree
from gateway.fraud import FraudService
from gateway.metrics import Metrics
from gateway.uploads import Uploads
from gateway.store.base import (
    Conflict, EnrolmentWrite, OptedOutError, Pat, Profile, Repository, SessionRecord, StoredBiokey, User,
)

log = structlog.get_logger(__name__)

NO_DATA_MS = 500          # below this much net speech nothing is scored
MAX_VERIFY_USERS = 5


def _unlink_all(paths: list[str]) -> int:
    """Remove files; returns how many could not be removed."""
    failed = 0
    for p in paths:
        try:
            Path(p).unlink(missing_ok=True)
        except OSError:
            failed += 1
    return failed


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass                      # not empty, or absent


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Caller:
    """An authenticated session: its record, profile and token."""
    session: SessionRecord
    profile: Profile
    token: str


class Core:
    def __init__(self, settings: Settings, store: Repository, engine: Engine, sink: EventSink,
                 keyring: Keyring, metrics: Metrics | None = None):
        self.settings = settings
        self.store = store
        self.engine = engine
        self.sink = sink
        self.keyring = keyring
        self.metrics = metrics or Metrics()
        self.bus = ResultsBus()
        self.fraud = FraudService(self)
        self.auth = Authenticator(store, settings.auth.token_idle_s)
        self.dialogs = DialogRegistry(self, settings.dialogs.retain_after_close_s)
        self._names: dict[str, str] = {}
        # absolute: rows keep these paths (start-up matches files and rows by their last parts)
        self.audio_dir = (settings.data_dir / "audio").resolve()
        self.uploads = Uploads(engine, settings.uploads.max_audio_s, settings.uploads.max_concurrent)

    # -- names for events -------------------------------------------------------------------
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

    # -- sessions ---------------------------------------------------------------------------
    async def create_token(self, pat: Pat, req: TokenRequest) -> str:
        tenant = await self.store.get_tenant(req.tenantId)
        if tenant is None or tenant.id != pat.tenant_id:
            raise forbidden("the personal access token does not belong to tenant " + repr(req.tenantId))
        profile = await self.store.get_profile(tenant.id, req.vbProfile)
        if profile is None or profile.group_id != pat.group_id:
            # Same answer for "absent" and "another group's": no probing across groups.
            raise not_found("PROFILE_NOT_FOUND", f"no VB profile {req.vbProfile!r} in this token's group")
        token = new_session_token()
        t = now_ms()
        await self.store.create_session(SessionRecord(
            token_hash(token), tenant.id, profile.group_id, profile.id, req.masterId, req.agentId,
            req.agentSkill, req.ccaasProvider, self._session_biokeys(profile, req.customProperties), t, t))
        self.metrics.inc("vbgw_tokens_created_total")
        return token

    def _session_biokeys(self, profile: Profile, custom: dict[str, str]) -> dict[str, str]:
        """What a session keeps of its customProperties: only the profile's biokeys (the one
        use they have: biokeys of an enrolment from the call), sensitive ones as their keyed
        hash, like the biokeys table (docs/security.md). The rest is not stored."""
        kept = {}
        for k, v in custom.items():
            d = profile.settings.biokey(k)
            if d is not None:
                kept[k] = self.keyring.biokey_value(profile.id, k, v) if d.sensitive else v
        return kept

    async def purge_expired_sessions(self) -> int:
        """Delete session rows whose token expired (auth.token_idle_s without use)."""
        return await self.store.purge_sessions(now_ms() - self.settings.auth.token_idle_s * 1000)

    async def caller(self, rec: SessionRecord, token: str) -> Caller:
        profile = await self.store.get_profile(rec.tenant_id, rec.profile_id)
        if profile is None:
            raise ApiError(401, "PROFILE_GONE", "the session's VB profile no longer exists")
        return Caller(rec, profile, token)

    def dialog_of(self, c: Caller, create: bool = False) -> Dialog | None:
        """The session's own dialog on its masterId: its profile's, never another profile's or
        group's (the ownership rule: gateway/dialogs.py). `create`: one of its own if none."""
        return self.dialogs.for_session(c.session.tenant_id, c.session.master_id, c.profile, create)

    # -- users ------------------------------------------------------------------------------
    def _stored_biokey(self, profile: Profile, key: str, value: str) -> StoredBiokey:
        d = profile.settings.biokey(key)
        if d is None:
            raise ApiError(400, "UNKNOWN_BIOKEY", f"biokey {key!r} is not defined in VB profile {profile.name!r}")
        if d.sensitive:
            return StoredBiokey(key, self.keyring.biokey_value(profile.id, key, value), True)
        return StoredBiokey(key, value, False)

    def stored_biokeys(self, profile: Profile, biokeys: dict[str, str]) -> list[StoredBiokey]:
        """Biokeys as they are stored: each must be defined in the profile (400 UNKNOWN_BIOKEY),
        sensitive ones become their keyed hash."""
        return [self._stored_biokey(profile, k, v) for k, v in biokeys.items()]

    async def user(self, c: Caller, user_id: str) -> User | None:
        return await self.store.get_user(c.profile.id, user_id)

    async def search(self, profile: Profile, biokeys: list[BiokeyIn]) -> list[User]:
        pairs: list[tuple[str, str]] = []
        users_by_id: list[str] = []
        for bk in biokeys:
            d = profile.settings.biokey(bk.key)
            if bk.is_user_id or (d is not None and d.is_user_id):
                users_by_id.append(bk.value)
                continue
            pairs.append((bk.key, self._stored_biokey(profile, bk.key, bk.value).value))
        found = await self.store.search_users(profile.id, pairs) if pairs else []
        if users_by_id:
            direct = [u for uid in users_by_id if (u := await self.store.get_user(profile.id, uid))]
            found = [u for u in found if u.user_id in users_by_id] if pairs else direct
        return found

    def _enrol_biokeys(self, c: Caller, biokeys: list[BiokeyIn], user_id: str | None) -> tuple[str, list[StoredBiokey]]:
        uid_key = next(b.key for b in c.profile.settings.biokeys if b.is_user_id)
        flagged = [b.value for b in biokeys if b.is_user_id or b.key == uid_key]
        if user_id is None and not flagged:
            raise ApiError(400, "USER_ID_REQUIRED", "give user_id or a biokey with is_user_id true")
        uid = user_id or flagged[0]
        if any(v != uid for v in flagged):
            raise ApiError(400, "USER_ID_MISMATCH", "user_id and the is_user_id biokey differ")
        merged: dict[str, StoredBiokey] = {}
        # Session customProperties that are profile biokeys count as biokeys too (sensitive
        # ones were stored as their keyed hash already: see _session_biokeys).
        for k, v in c.session.custom_properties.items():
            d = c.profile.settings.biokey(k)
            if d is not None and not d.is_user_id:
                hashed = d.sensitive and v.startswith(HASHED_PREFIX)
                merged[k] = StoredBiokey(k, v, True) if hashed else self._stored_biokey(c.profile, k, v)
        for b in biokeys:
            if not (b.is_user_id or b.key == uid_key):
                merged[b.key] = self._stored_biokey(c.profile, b.key, b.value)
        stored = list(merged.values())
        stored.append(StoredBiokey(uid_key, uid, False))
        return uid, stored

    async def enrol_from_dialog(self, c: Caller, biokeys: list[BiokeyIn], user_id: str | None,
                                opt_in: bool) -> tuple[User, int]:
        uid, stored = self._enrol_biokeys(c, biokeys, user_id)
        dialog = self.dialog_of(c)
        if dialog is None:
            existing = await self.store.get_user(c.profile.id, uid)
            self._refuse_opted_out(existing, uid, opt_in)
            await self._enrolment_failed(c.profile, uid, stored, None, c.session.master_id, c, "Agent Side",
                                         "NO_AUDIO", existing)
            raise ApiError(409, "NO_AUDIO", "no audio has been streamed for this session's masterId yet")
        emb = await dialog.engine_session.embedding()
        fp = await self.fraud.dialog_fingerprint(dialog)
        return await self._enrol(c.profile, uid, stored, emb, c.session.master_id, opt_in, c, fingerprint=fp)

    async def enrol_from_upload(self, profile: Profile, user_id: str, biokeys: dict[str, str] | list[StoredBiokey],
                                data: bytes, dialog_id: str, keep_audio: bool, source=None) -> tuple[User, int]:
        """Batch enrolment from an uploaded WAV file, analysed as file work (gateway.uploads:
        streamed, after live calls' work, within uploads.max_audio_s). With `keep_audio` the
        decoded 8 kHz audio is kept beside the voiceprint: the file is on disk (fsynced)
        before the row that points at it commits, and removed if the enrolment fails; a
        crash in between leaves a file without a row, which start-up removes (reconcile_files).
        `source`: a CCaaS recording's decoder (gateway.recordings.media.RecordingSource)."""
        save_to = self._audio_path(profile, user_id) if keep_audio else None
        a = await self.uploads.analyse(data, fingerprint=True, save_to=save_to, source=source)
        paths = [a.path] if a.path else []
        try:
            return await self.enrol_embedding(profile, user_id, biokeys, a.embedding, dialog_id, a.fingerprint,
                                              audio_paths=paths)
        except BaseException:
            await asyncio.to_thread(_unlink_all, paths)
            raise

    async def enrol_embedding(self, profile: Profile, user_id: str, biokeys: dict[str, str] | list[StoredBiokey],
                              emb: Embedding | None, dialog_id: str, fingerprint: bytes | None, *,
                              audio_paths: list[str] | None = None, opt_in: bool = False, require_new: bool = False,
                              origin: str = "Batch") -> tuple[User, int]:
        """Enrol (or merge into) `user_id` from an embedding of uploaded audio (no session).
        `biokeys`: plain values, or their stored form from stored_biokeys (a queued job keeps
        no sensitive value in the clear)."""
        uid_key = next(b.key for b in profile.settings.biokeys if b.is_user_id)
        stored = biokeys if isinstance(biokeys, list) else self.stored_biokeys(profile, biokeys)
        stored = [b for b in stored if b.key != uid_key]
        stored.append(StoredBiokey(uid_key, user_id, False))
        return await self._enrol(profile, user_id, stored, emb, dialog_id, opt_in, None, audio_paths,
                                 fingerprint=fingerprint, require_new=require_new, origin=origin)

    def _audio_folder(self, profile_id: str, user_id: str) -> Path:
        return self.audio_dir / profile_id / self.keyring.bio_user_id(profile_id, user_id)[:32]

    def _audio_path(self, profile: Profile, user_id: str) -> Path:
        return self._audio_folder(profile.id, user_id) / f"{now_ms()}-{os.urandom(4).hex()}.wav"

    async def reconcile_files(self) -> None:
        """Start-up: the data directory and kept audio owner-only (an older version made them
        world-readable), and kept audio matching the database. A file no row points at is
        removed: a crash between writing an enrolment's audio and committing its row, or
        between an opt-out's commit and its unlinks, leaves one. A row whose file is missing
        is only logged (an unmounted volume must not erase the database's references). Files
        and rows are matched on <profile>/<user folder>/<name> (names are unique), so a data
        directory moved elsewhere keeps its audio."""
        rows = await self.store.audio_paths()
        known = {Path(p).parts[-3:] for p in rows}
        data_dir, audio_dir = self.settings.data_dir, self.audio_dir

        def scan() -> tuple[int, int, int]:
            tighten(data_dir, DIR_MODE)
            tightened = tighten_tree(audio_dir)
            removed = 0
            if audio_dir.is_dir():
                for dirpath, _, files in os.walk(audio_dir, topdown=False):
                    for f in files:
                        path = Path(dirpath, f)
                        if path.parts[-3:] not in known:
                            path.unlink(missing_ok=True)
                            removed += 1
                    if dirpath != str(audio_dir):
                        _rmdir_if_empty(Path(dirpath))
            missing = sum(1 for p in rows if not audio_dir.joinpath(*Path(p).parts[-3:]).exists())
            return removed, missing, tightened
        removed, missing, tightened = await asyncio.to_thread(scan)
        if removed or missing or tightened:
            log.warning("audio_files_reconciled", orphans_removed=removed, rows_without_file=missing,
                        permissions_tightened=tightened)

    async def _enrol(self, profile: Profile, uid: str, stored: list[StoredBiokey], emb: Embedding | None,
                     dialog_id: str, opt_in: bool, c: Caller | None, audio_paths: list[str] | None = None,
                     fingerprint: bytes | None = None, require_new: bool = False, origin: str = "Batch"):
        need = profile.settings.enrol_min_speech_ms
        have = emb.speech_ms if emb is not None else 0
        existing = await self.store.get_user(profile.id, uid)
        self._refuse_opted_out(existing, uid, opt_in)
        if emb is None or have < need:
            await self._enrolment_failed(profile, uid, stored, emb, dialog_id, c, origin, "LOW_DATA", existing)
            raise ApiError(422, "LOW_DATA", f"enrolment needs {need} ms of clean speech; {have} ms so far, "
                                            f"{need - have} ms missing")
        if existing is not None and existing.status == "ENROLLED":
            vps = await self.store.voiceprints(profile.id, [uid])
            old = vps.get(uid)
            if old is not None and old.model == emb.model:
                emb = self.engine.merge(np.frombuffer(old.vector, np.float32), old.speech_ms, emb)
        info = self.engine.info
        try:
            user, vp = await self.store.enrol(EnrolmentWrite(
                profile.id, uid, stored, np.asarray(emb.vector, np.float32).tobytes(), emb.speech_ms,
                emb.model, info.extractor_version, info.plda_version, dialog_id, opt_in, audio_paths or [],
                fingerprint, require_new))
        except OptedOutError as exc:
            raise ApiError(409, "USER_OPTED_OUT", str(exc)) from None
        except Conflict as exc:
            raise ApiError(400, "USER_EXISTS", str(exc)) from None
        self.metrics.inc("vbgw_enrolments_total")
        await self._publish_enrolment(profile, uid, stored, dialog_id, c, origin, user, emb,
                                      voiceprint_id=vp.id, creation_ts=vp.created_ms)
        return user, emb.speech_ms

    @staticmethod
    def _refuse_opted_out(existing: User | None, uid: str, opt_in: bool) -> None:
        if existing is not None and existing.status == "OPTED_OUT" and not opt_in:
            raise ApiError(409, "USER_OPTED_OUT", f"user {uid!r} opted out; enrolling again needs an explicit "
                                                  "opt-in (\"opt_in\": true)")

    async def _enrolment_failed(self, profile: Profile, uid: str, stored: list[StoredBiokey], emb: Embedding | None,
                                dialog_id: str, c: Caller | None, origin: str, reason: str,
                                existing: User | None) -> None:
        """The `vb_enrolment` event of a voiceprint that could not be built (docs/events.md):
        `vp_fail: true`, `vp_fail_reason` LOW_DATA (less clean speech than the profile's
        enrolment minimum) or NO_AUDIO (nothing streamed for the session's call);
        `voiceprint_id` null, nothing stored."""
        self.metrics.inc("vbgw_enrolment_failures_total", reason=reason)
        await self._publish_enrolment(profile, uid, stored, dialog_id, c, origin, existing, emb,
                                      voiceprint_id=None, creation_ts=now_ms(), fail_reason=reason)

    async def _publish_enrolment(self, profile: Profile, uid: str, stored: list[StoredBiokey], dialog_id: str,
                                 c: Caller | None, origin: str, user: User | None, emb: Embedding | None, *,
                                 voiceprint_id: int | None, creation_ts: int, fail_reason: str | None = None) -> None:
        info = self.engine.info
        await self.sink.publish(VbEnrolmentEvent(
            region=self.settings.events.region, vb_version=self.settings.events.vb_version,
            dialog_id=dialog_id, session_id=token_hash(c.token)[:32] if c else "",
            origin="Agent Side" if c else origin, group_name=await self.group_name(profile.group_id),
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

    async def opt_out(self, c: Caller, user_id: str) -> User | None:
        return await self.opt_out_user(c.profile, user_id, c.session.master_id)

    async def opt_out_user(self, profile: Profile, user_id: str, dialog_id: str) -> User | None:
        user, paths = await self.store.opt_out(profile.id, user_id)
        # where the files are now (a moved data directory keeps the rows' old paths)
        failed = await asyncio.to_thread(_unlink_all, [str(self.audio_dir.joinpath(*Path(p).parts[-3:]))
                                                       for p in paths])
        await asyncio.to_thread(_rmdir_if_empty, self._audio_folder(profile.id, user_id))
        if failed:
            log.error("audio_delete_failed", dialog_id=dialog_id, files=failed)
        self.metrics.inc("vbgw_optouts_total")
        return user

    # -- verification -----------------------------------------------------------------------
    def band_targets(self, profile: Profile) -> BandTargets:
        b = profile.settings.bands
        return BandTargets(b.far_high, b.far_medium, b.far_low, b.frr_high, b.frr_medium, b.frr_low)

    async def score_users(self, dialog: Dialog, emb: Embedding | None, user_ids: list[str],
                          change: SpeakerChange | None, result_type: str = "ONDEMAND",
                          delayed: bool = False) -> list[dict]:
        """Per-user results, best first. Each dict carries every field any surface needs."""
        assert dialog.profile is not None
        out = await self.score_profile_users(dialog.profile, emb, user_ids, change, result_type, delayed)
        await self.fraud.annotate(dialog, out, result_type)    # pad_detected (Aculab), see gateway/fraud.py
        return out

    async def score_profile_users(self, profile: Profile, emb: Embedding | None, user_ids: list[str],
                                  change: SpeakerChange | None, result_type: str = "ONDEMAND",
                                  delayed: bool = False) -> list[dict]:
        """score_users without a dialog (audio uploaded as a file): no live fraud signals."""
        speech = emb.speech_ms if emb is not None else 0
        vps = await self.store.voiceprints(profile.id, user_ids)
        targets = self.band_targets(profile)
        out = []
        for uid in user_ids:
            r = {"user_id": uid, "bio_user_id": self.keyring.bio_user_id(profile.id, uid),
                 "bio_result": "", "bio_score": 0.0, "llr": 0.0, "llr_norm": 0.0, "speech_millis": speech,
                 "error_type": None, "user_changed": bool(change and change.user_changed),
                 "scd_llr": change.scd_llr if change else None, "scd_nllr": change.scd_nllr if change else None,
                 "voiceprint_id": None, "result_type": result_type, "delayed": delayed}
            vp = vps.get(uid)
            if vp is None or vp.model != self.engine.info.model:
                r["bio_result"] = "NOT_SCORED"
                r["error_type"] = await self._not_scored_reason(profile, uid, vp is not None)
            elif emb is None or speech < NO_DATA_MS:
                r["bio_result"], r["error_type"] = "NO_DATA", "NO_SPEECH"
            elif speech < profile.settings.early_speech_ms:
                r["bio_result"], r["error_type"] = "LOW_DATA", "NOT_ENOUGH_SPEECH"
            else:
                s = self.engine.score(emb, np.frombuffer(vp.vector, np.float32))
                r.update(bio_score=round(s.bio_score, 4), llr=round(s.llr, 4), llr_norm=round(s.llr_norm, 4),
                         bio_result=self.engine.classify(s.llr, targets), voiceprint_id=vp.id)
            out.append(r)
        out.sort(key=lambda r: (r["voiceprint_id"] is not None, r["llr"]), reverse=True)
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

    async def verify_ondemand(self, c: Caller, user_ids: list[str]) -> dict:
        dialog = self.dialog_of(c, create=True)       # no audio yet: NO_DATA, honestly
        emb = await dialog.engine_session.embedding()
        change = dialog.engine_session.speaker_change
        results = await self.score_users(dialog, emb, user_ids, change)
        best = results[0]
        await self.emit_verification_event(dialog, best, emb, change)
        self.metrics.inc("vbgw_verifications_total", result=best["bio_result"])
        return best

    async def emit_verification_event(self, dialog: Dialog, r: dict, emb: Embedding | None,
                                      change: SpeakerChange | None) -> None:
        assert dialog.profile is not None
        dialog.steps += 1
        await self.publish_verification_event(dialog.profile, dialog.dialog_id, dialog.steps, r, emb, change)

    async def publish_verification_event(self, profile: Profile, dialog_id: str, step: int, r: dict,
                                         emb: Embedding | None, change: SpeakerChange | None,
                                         origin: str = "Agent Side") -> None:
        info = self.engine.info
        await self.sink.publish(VbVerificationEvent(
            region=self.settings.events.region, vb_version=self.settings.events.vb_version,
            dialog_id=dialog_id, dialog_step=step,
            enrolled_user=VerificationEnrolledUser(user_id=r["user_id"],
                                                   organization_name=await self.tenant_name(profile.tenant_id)),
            group_name=await self.group_name(profile.group_id),
            voiceprint_ids=[r["voiceprint_id"]] if r["voiceprint_id"] is not None else [],
            profile_id=profile.id, verification_id=await self.store.next_verification_id(),
            extractor_version=info.extractor_version, frame_count=emb.speech_frames if emb else 0,
            llr=r["llr"] if r["voiceprint_id"] is not None else None, method=info.method, model=info.model,
            llr_norm=r["llr_norm"] if r["voiceprint_id"] is not None else None,
            plda_version=info.plda_version,
            verification_score=r["bio_score"] if r["voiceprint_id"] is not None else None,
            sw_version=info.sw_version, verification_ts=now_ms(), user_changed=r["user_changed"],
            verification_result=r["bio_result"],
            fail_reason="OK" if r["error_type"] is None else r["error_type"],
            scd_llr=change.scd_llr if change else None, scd_nllr=change.scd_nllr if change else None,
            verification_origin=origin, non_target=False))
