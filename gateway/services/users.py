"""Users of a VB profile: enrolment (one path, `_enrol`, whatever the audio: a live call, an
uploaded recording, the Aculab Users API), opt-out and opt-in (one path each, OCP and Aculab
alike), search by biokeys, and the kept enrolment audio on disk."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import structlog

from engine import Engine
from engine.types import Embedding
from gateway.errors import ApiError
from gateway.events.publisher import AGENT_SIDE, EventPublisher
from gateway.infra.clock import now_ms
from gateway.infra.files import DIR_MODE, tighten, tighten_tree
from gateway.infra.metrics import Metrics
from gateway.services.auth import HASHED_PREFIX, Keyring, token_hash
from gateway.services.sessions import Caller, Sessions
from gateway.services.uploads import MediaSource, Uploads
from gateway.store.base import Conflict, EnrolmentWrite, OptedOutError, Profile, Repository, StoredBiokey, User

if TYPE_CHECKING:
    from gateway.calls.dialog import Dialog

log = structlog.get_logger(__name__)



class BiokeyLike(Protocol):
    """A biokey as a request names it (gateway.web.schemas.BiokeyIn)."""
    key: str
    value: str
    is_user_id: bool


class CallFingerprints(Protocol):
    """Fraud signals, as enrolment from a call sees them (gateway/services/fraud.py)."""
    async def dialog_fingerprint(self, dialog: "Dialog") -> bytes | None: ...
    def forget(self, profile_id: str, user_id: str) -> None:
        """Drop what this process holds of the user's stored fingerprints (opt-out)."""


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


class Users:
    def __init__(self, store: Repository, engine: Engine, keyring: Keyring, uploads: Uploads, events: EventPublisher,
                 fingerprints: CallFingerprints, sessions: Sessions, metrics: Metrics, data_dir: Path):
        self.store = store
        self.engine = engine
        self.keyring = keyring
        self.uploads = uploads
        self.events = events
        self.fingerprints = fingerprints
        self.sessions = sessions
        self.metrics = metrics
        self.data_dir = data_dir
        # absolute: rows keep these paths (start-up matches files and rows by their last parts)
        self.audio_dir = (data_dir / "audio").resolve()

    # -- users ------------------------------------------------------------------------------
    def _stored_biokey(self, profile: Profile, key: str, value: str) -> StoredBiokey:
        d = profile.settings.biokey(key)
        if d is None:
            raise ApiError(400, "UNKNOWN_BIOKEY", f"biokey {key!r} is not defined in VB profile {profile.name!r}")
        if d.sensitive:
            return StoredBiokey(key, self.keyring.biokey_value(profile.id, key, value), True, plain=value,
                                hash_key_id=self.keyring.key_id)
        return StoredBiokey(key, value, False)

    def stored_biokeys(self, profile: Profile, biokeys: dict[str, str]) -> list[StoredBiokey]:
        """Biokeys as they are stored: each must be defined in the profile (400 UNKNOWN_BIOKEY),
        sensitive ones become their keyed hash."""
        return [self._stored_biokey(profile, k, v) for k, v in biokeys.items()]

    async def user(self, c: Caller, user_id: str) -> User | None:
        return await self.store.get_user(c.profile.id, user_id)

    async def search(self, profile: Profile, biokeys: Sequence[BiokeyLike]) -> list[User]:
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

    def _enrol_biokeys(self, c: Caller, biokeys: Sequence[BiokeyLike], user_id: str | None) -> tuple[str, list[StoredBiokey]]:
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

    async def enrol_from_dialog(self, c: Caller, biokeys: Sequence[BiokeyLike], user_id: str | None,
                                opt_in: bool) -> tuple[User, int]:
        uid, stored = self._enrol_biokeys(c, biokeys, user_id)
        dialog = self.sessions.dialog_of(c)
        if dialog is None:
            existing = await self.store.get_user(c.profile.id, uid)
            self._refuse_opted_out(existing, uid, opt_in)
            await self._enrolment_failed(c.profile, uid, stored, None, c.session.master_id, c, "Agent Side",
                                         "NO_AUDIO", existing)
            raise ApiError(409, "NO_AUDIO", "no audio has been streamed for this session's masterId yet")
        emb = await dialog.engine_session.embedding()
        fp = await self.fingerprints.dialog_fingerprint(dialog)
        return await self._enrol(c.profile, uid, stored, emb, c.session.master_id, opt_in, c, fingerprint=fp)

    async def enrol_from_upload(self, profile: Profile, user_id: str, biokeys: dict[str, str] | list[StoredBiokey],
                                data: bytes, dialog_id: str, keep_audio: bool,
                                source: MediaSource | None = None) -> tuple[User, int]:
        """Batch enrolment from an uploaded WAV file, analysed as file work (gateway.services.uploads:
        streamed, after live calls' work, within uploads.max_audio_s). With `keep_audio` the
        decoded 8 kHz audio is kept beside the voiceprint: the file is on disk (fsynced)
        before the row that points at it commits, and removed if the enrolment fails; a
        crash in between leaves a file without a row, which start-up removes (reconcile_files).
        `source`: a CCaaS recording's decoder (gateway.services.recordings.media.RecordingSource)."""
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
                              origin: str = "Batch", min_speech_ms: int | None = None,
                              passphrase: bytes | None = None) -> tuple[User, int]:
        """Enrol (or merge into) `user_id` from an embedding of uploaded audio (no session).
        `biokeys`: plain values, or their stored form from stored_biokeys (a queued job keeps
        no sensitive value in the clear). `min_speech_ms`: the caller's minimum instead of the
        profile's (the Aculab API's, per user group key); `passphrase`: the user's passphrase
        templates, stored with the voiceprint (EnrolmentWrite.passphrase)."""
        uid_key = next(b.key for b in profile.settings.biokeys if b.is_user_id)
        stored = biokeys if isinstance(biokeys, list) else self.stored_biokeys(profile, biokeys)
        stored = [b for b in stored if b.key != uid_key]
        stored.append(StoredBiokey(uid_key, user_id, False))
        return await self._enrol(profile, user_id, stored, emb, dialog_id, opt_in, None, audio_paths,
                                 fingerprint=fingerprint, require_new=require_new, origin=origin,
                                 min_speech_ms=min_speech_ms, passphrase=passphrase)

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
        data_dir, audio_dir = self.data_dir, self.audio_dir

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
                     fingerprint: bytes | None = None, require_new: bool = False, origin: str = "Batch",
                     min_speech_ms: int | None = None, passphrase: bytes | None = None):
        need = profile.settings.enrol_min_speech_ms if min_speech_ms is None else min_speech_ms
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
                fingerprint, require_new, passphrase))
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
        await self.events.enrolment(profile, uid, stored, dialog_id, token_hash(c.token)[:32] if c else "",
                                    AGENT_SIDE if c else origin, user, emb, voiceprint_id=voiceprint_id,
                                    creation_ts=creation_ts, fail_reason=fail_reason)

    async def opt_out(self, profile: Profile, user_id: str, dialog_id: str) -> User | None:
        """Opt a user out (OCP /users/optout, Aculab delete): voiceprints, biokeys, fingerprints
        and counts go in one transaction, then the kept audio files."""
        user, paths = await self.store.opt_out(profile.id, user_id)
        self.fingerprints.forget(profile.id, user_id)
        # where the files are now (a moved data directory keeps the rows' old paths)
        failed = await asyncio.to_thread(_unlink_all, [str(self.audio_dir.joinpath(*Path(p).parts[-3:]))
                                                       for p in paths])
        await asyncio.to_thread(_rmdir_if_empty, self._audio_folder(profile.id, user_id))
        if failed:
            log.error("audio_delete_failed", dialog_id=dialog_id, files=failed)
        self.metrics.inc("vbgw_optouts_total")
        return user

    async def opt_in(self, profile: Profile, user_id: str) -> None:
        """Opt a user back in (explicit consent): enrolment is possible again."""
        await self.store.opt_in(profile.id, user_id)
