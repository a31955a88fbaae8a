"""SQLite (WAL) repository. All SQL runs on one dedicated thread with one connection, so
the event loop never blocks and writes are serialised; every enrolment is committed (and
synced, synchronous=FULL) before the coroutine returns."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import structlog

from gateway.infra.files import prepare_sqlite
from gateway.infra.clock import now_ms
from gateway.store.base import (
    AculabCall, AudioHookOrg, Blocklist, BlocklistEntry, Conflict, Credential, EnrolmentWrite, Group, HashKeyUsage, OptedOutError,
    NiceBusinessUnit, Pat, Profile, ProfileSettings, RecordingJob, Repository, SessionRecord, StoredBiokey,
    FingerprintRef, StoredFingerprint, Tenant, User, UserGroupKey, UserGroupKeySettings, VerificationStats, Voiceprint,
    key_settings, key_settings_json,
)
from gateway.store.keys import DataKeys, aad, open_opt, seal_opt
from gateway.store.migrations import MIGRATIONS as _MIGRATIONS, SEALED
from gateway.store.recording_jobs import (
    EMPTY_BIOKEYS, ROW_COLUMNS, UNFINISHED_JOB_WHERE, job_aad, recording_job_from_row, recording_job_values,
)

log = structlog.get_logger(__name__)

# Versioned schema migrations (gateway/store/migrations.py): index i brings the schema from
# version i to i + 1.
MIGRATIONS: list[str] = [m.sqlite for m in _MIGRATIONS]




class SqliteRepository(Repository):
    def __init__(self, path: Path, keys: DataKeys | None = None):
        self.path = Path(path)
        self.keys: DataKeys | None = keys   # None: vectors and hashes are written in the clear (tools, tests)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    # -- plumbing ---------------------------------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn):
        assert self._conn is not None, "repository not open"
        return fn(self._conn)

    def _tx(self, fn):
        """Run fn inside one transaction on the DB thread."""
        def run(conn: sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out
        return self._run(run)

    def _open_sync(self) -> None:
        prepare_sqlite(self.path)            # 0600, and so its -wal and -shm (gateway/infra/files.py)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # Deleted biometric data is overwritten, not left in free pages.
        conn.execute("PRAGMA secure_delete=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for i in range(version, len(MIGRATIONS)):
            # One script, one transaction: a migration is applied whole or not at all.
            try:
                conn.executescript(f"BEGIN IMMEDIATE;{MIGRATIONS[i]};PRAGMA user_version={i + 1};COMMIT;")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
                raise
        # A crash between an opt-out's commit and its WAL truncation left the deleted rows'
        # page images in the WAL: fold it into the (secure_delete) database and empty it.
        self._truncate_wal(conn, quiet=True)       # (busy: a running gateway; it truncates its own)
        self._conn = conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_sync)

    async def close(self) -> None:
        if self._conn is not None:
            def shut(conn):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
            await self._run(shut)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._run(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except Exception:  # noqa: BLE001 - any failure means not ready (/readyz)
            return False

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    # -- tenancy ----------------------------------------------------------------------------
    async def ensure_tenant(self, name: str) -> Tenant:
        def fn(c):
            row = c.execute("SELECT id, name FROM tenants WHERE name=?", (name,)).fetchone()
            if row:
                return Tenant(row["id"], row["name"])
            t = Tenant("ten_" + uuid.uuid4().hex[:12], name)
            c.execute("INSERT INTO tenants VALUES (?,?,?)", (t.id, t.name, now_ms()))
            return t
        return await self._tx(fn)

    async def get_tenant(self, id_or_name: str) -> Tenant | None:
        def fn(c):
            row = c.execute("SELECT id, name FROM tenants WHERE id=? OR name=?",
                            (id_or_name, id_or_name)).fetchone()
            return Tenant(row["id"], row["name"]) if row else None
        return await self._run(fn)

    async def ensure_group(self, tenant_id: str, name: str) -> Group:
        def fn(c):
            row = c.execute("SELECT id FROM groups WHERE tenant_id=? AND name=?", (tenant_id, name)).fetchone()
            if row:
                return Group(row["id"], tenant_id, name)
            g = Group("grp_" + uuid.uuid4().hex[:12], tenant_id, name)
            c.execute("INSERT INTO groups VALUES (?,?,?,?)", (g.id, tenant_id, name, now_ms()))
            return g
        return await self._tx(fn)

    async def get_group(self, group_id: str) -> Group | None:
        def fn(c):
            row = c.execute("SELECT * FROM groups WHERE id=?", (group_id,)).fetchone()
            return Group(row["id"], row["tenant_id"], row["name"]) if row else None
        return await self._run(fn)

    @staticmethod
    def _profile(row) -> Profile:
        return Profile(row["id"], row["tenant_id"], row["group_id"], row["name"],
                       ProfileSettings.model_validate_json(row["settings"]))

    async def create_profile(self, tenant_id, group_id, name, settings) -> Profile:
        def fn(c):
            if c.execute("SELECT 1 FROM profiles WHERE tenant_id=? AND name=?", (tenant_id, name)).fetchone():
                raise Conflict(f"profile {name!r} already exists")
            pid = "prof_" + uuid.uuid4().hex[:12]
            c.execute("INSERT INTO profiles VALUES (?,?,?,?,?,?)",
                      (pid, tenant_id, group_id, name, settings.model_dump_json(), now_ms()))
            return Profile(pid, tenant_id, group_id, name, settings)
        return await self._tx(fn)

    async def get_profile(self, tenant_id, id_or_name) -> Profile | None:
        def fn(c):
            row = c.execute("SELECT * FROM profiles WHERE tenant_id=? AND (id=? OR name=?)",
                            (tenant_id, id_or_name, id_or_name)).fetchone()
            return self._profile(row) if row else None
        return await self._run(fn)

    async def list_profiles(self, tenant_id=None) -> list[Profile]:
        def fn(c):
            if tenant_id is None:
                rows = c.execute("SELECT * FROM profiles ORDER BY created_ms").fetchall()
            else:
                rows = c.execute("SELECT * FROM profiles WHERE tenant_id=? ORDER BY created_ms",
                                 (tenant_id,)).fetchall()
            return [self._profile(r) for r in rows]
        return await self._run(fn)

    async def create_pat(self, tenant_id, group_id, name, token_hash) -> Pat:
        def fn(c):
            p = Pat("pat_" + uuid.uuid4().hex[:12], tenant_id, group_id, name)
            c.execute("INSERT INTO pats (id, tenant_id, group_id, name, token_hash, created_ms) VALUES (?,?,?,?,?,?)",
                      (p.id, tenant_id, group_id, name, token_hash, now_ms()))
            return p
        return await self._tx(fn)

    async def find_pat(self, token_hash) -> Pat | None:
        def fn(c):
            row = c.execute("SELECT * FROM pats WHERE token_hash=? AND revoked=0", (token_hash,)).fetchone()
            return Pat(row["id"], row["tenant_id"], row["group_id"], row["name"]) if row else None
        return await self._run(fn)

    async def _credentials(self, table: str, tenant_id: str | None) -> list[Credential]:
        def fn(c):
            rows = c.execute(f"SELECT * FROM {table} WHERE ?1 IS NULL OR tenant_id=?1 ORDER BY created_ms, id",
                             (tenant_id,)).fetchall()
            return [Credential(r["id"], r["tenant_id"], r["group_id"], r["profile_id"] if "profile_id" in r.keys()
                               else None, r["name"], r["created_ms"], bool(r["revoked"])) for r in rows]
        return await self._run(fn)

    async def _revoke(self, table: str, id_: str) -> bool:
        return await self._tx(lambda c: c.execute(f"UPDATE {table} SET revoked=1 WHERE id=?", (id_,)).rowcount > 0)

    async def list_pats(self, tenant_id=None) -> list[Credential]:
        return await self._credentials("pats", tenant_id)

    async def revoke_pat(self, pat_id) -> bool:
        return await self._revoke("pats", pat_id)

    # -- session tokens ---------------------------------------------------------------------
    async def create_session(self, rec: SessionRecord) -> None:
        def fn(c):
            c.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (rec.token_hash, rec.tenant_id, rec.group_id, rec.profile_id, rec.master_id,
                       rec.agent_id, rec.agent_skill, rec.ccaas_provider,
                       json.dumps(rec.custom_properties), rec.created_ms, rec.last_used_ms))
        await self._tx(fn)

    async def get_session(self, token_hash) -> SessionRecord | None:
        def fn(c):
            r = c.execute("SELECT * FROM sessions WHERE token_hash=?", (token_hash,)).fetchone()
            if not r:
                return None
            return SessionRecord(r["token_hash"], r["tenant_id"], r["group_id"], r["profile_id"],
                                 r["master_id"], r["agent_id"], r["agent_skill"], r["ccaas_provider"],
                                 json.loads(r["custom"]), r["created_ms"], r["last_used_ms"])
        return await self._run(fn)

    async def touch_session(self, token_hash, now) -> None:
        await self._run(lambda c: c.execute("UPDATE sessions SET last_used_ms=? WHERE token_hash=?",
                                            (now, token_hash)))

    async def purge_sessions(self, older_than_ms) -> int:
        return await self._run(lambda c: c.execute("DELETE FROM sessions WHERE last_used_ms < ?",
                                                   (older_than_ms,)).rowcount)

    # -- users ------------------------------------------------------------------------------
    @staticmethod
    def _user(c, row) -> User:
        bks = tuple(StoredBiokey(b["key"], b["value"], bool(b["sensitive"])) for b in c.execute(
            "SELECT key, value, sensitive FROM biokeys WHERE user_row=? ORDER BY key", (row["row_id"],)))
        return User(row["row_id"], row["profile_id"], row["user_id"], row["status"], row["created_ms"],
                    row["last_update_ms"], row["opt_out_ts"], row["opt_in_ts"], bks)

    @staticmethod
    def _user_row(c, profile_id, user_id):
        return c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (profile_id, user_id)).fetchone()

    def _user_by_row_id(self, c, row_id) -> User:
        return self._user(c, c.execute("SELECT * FROM users WHERE row_id=?", (row_id,)).fetchone())

    @staticmethod
    def _insert_user(c, profile_id, user_id, status, t, opt_in_ts=None, opt_out_ts=None) -> int:
        c.execute("INSERT INTO users (profile_id, user_id, status, created_ms, last_update_ms, opt_in_ts, opt_out_ts)"
                  " VALUES (?,?,?,?,?,?,?)", (profile_id, user_id, status, t, t, opt_in_ts, opt_out_ts))
        return c.execute("SELECT last_insert_rowid()").fetchone()[0]

    async def get_user(self, profile_id, user_id) -> User | None:
        def fn(c):
            row = self._user_row(c, profile_id, user_id)
            return self._user(c, row) if row else None
        return await self._run(fn)

    async def search_users(self, profile_id, biokeys) -> list[User]:
        """Users of the profile whose biokeys match every (key, stored value) pair given."""
        def fn(c):
            if not biokeys:
                return []
            sql = "SELECT u.* FROM users u WHERE u.profile_id=?"
            args: list = [profile_id]
            for key, value in biokeys:
                sql += " AND EXISTS (SELECT 1 FROM biokeys b WHERE b.user_row=u.row_id AND b.key=? AND b.value=?)"
                args += [key, value]
            rows = c.execute(sql + " ORDER BY u.user_id LIMIT 100", args).fetchall()
            return [self._user(c, r) for r in rows]
        return await self._run(fn)

    async def enrol(self, w: EnrolmentWrite) -> tuple[User, Voiceprint]:
        def fn(c):
            t = now_ms()
            row = self._user_row(c, w.profile_id, w.user_id)
            if row is None:
                row_id = self._insert_user(c, w.profile_id, w.user_id, "ENROLLED", t,
                                           opt_in_ts=t if w.opt_in else None)
            else:
                row_id = row["row_id"]
                if w.require_new and row["status"] in ("ENROLLED", "RE_ENROLL"):
                    raise Conflict(f"user {w.user_id!r} is already enrolled")
                if row["status"] == "OPTED_OUT" and not w.opt_in:
                    raise OptedOutError(f"user {w.user_id!r} opted out; enrolling again needs an explicit opt-in")
                opt_in_ts = t if (w.opt_in and row["status"] == "OPTED_OUT") else row["opt_in_ts"]
                c.execute("UPDATE users SET status='ENROLLED', last_update_ms=?, opt_in_ts=? WHERE row_id=?",
                          (t, opt_in_ts, row_id))
                c.execute("DELETE FROM voiceprints WHERE user_row=?", (row_id,))
            for bk in w.biokeys:
                # the clear value of a sensitive key is kept only sealed, never without a data key
                enc, enc_kid = (self.keys.seal(bk.plain.encode(), aad("biokeys", row_id, bk.key))
                                if bk.sensitive and bk.plain is not None and self.keys else (None, None))
                c.execute("INSERT INTO biokeys (user_row, key, value, sensitive, hash_key_id, value_enc, value_key_id)"
                          " VALUES (?,?,?,?,?,?,?) ON CONFLICT (user_row, key) DO UPDATE"
                          " SET value=excluded.value, sensitive=excluded.sensitive, hash_key_id=excluded.hash_key_id,"
                          " value_enc=excluded.value_enc, value_key_id=excluded.value_key_id",
                          (row_id, bk.key, bk.value, int(bk.sensitive), bk.hash_key_id if bk.sensitive else None,
                           enc, enc_kid))
            vec, vkid = seal_opt(self.keys, w.vector, aad("voiceprints", row_id))
            c.execute("INSERT INTO voiceprints (user_row, vector, speech_ms, model, extractor_version,"
                      " plda_version, dialog_id, created_ms, key_id) VALUES (?,?,?,?,?,?,?,?,?)",
                      (row_id, vec, w.speech_ms, w.model, w.extractor_version, w.plda_version, w.dialog_id, t, vkid))
            vp_id = c.execute("SELECT last_insert_rowid()").fetchone()[0]
            for p in w.audio_paths:
                c.execute("INSERT INTO audio (user_row, path, created_ms) VALUES (?,?,?)", (row_id, p, t))
            if w.fingerprint:
                fp, fkid = seal_opt(self.keys, w.fingerprint, aad("fingerprints", row_id))
                c.execute("INSERT INTO fingerprints (user_row, kind, dialog_id, hashes, n, created_ms, key_id)"
                          " VALUES (?,?,?,?,?,?,?)", (row_id, "ENROL", w.dialog_id, fp,
                                                      len(w.fingerprint) // 8, t, fkid))
            if w.passphrase is not None:
                pp, pkid = seal_opt(self.keys, w.passphrase, aad("passphrases", row_id))
                c.execute("INSERT INTO passphrases (user_row, model, created_ms, updated_ms, key_id) VALUES (?,?,?,?,?)"
                          " ON CONFLICT (user_row) DO UPDATE SET model=excluded.model,"
                          " updated_ms=excluded.updated_ms, key_id=excluded.key_id", (row_id, pp, t, t, pkid))
            return self._user_by_row_id(c, row_id), Voiceprint(vp_id, row_id, w.vector, w.speech_ms, w.model, w.extractor_version,
                                    w.plda_version, t)
        return await self._tx(fn)

    async def opt_out(self, profile_id, user_id) -> tuple[User | None, list[str]]:
        """Deletes voiceprints, biokeys, audio records, audio fingerprints and verification counts; keeps an OPTED_OUT tombstone (the
        user id and timestamps only). The user's biokey values also leave the customProperties of
        the profile's sessions. A user with no row gets none (None): nothing is stored about them,
        unless a recording job would enrol them: then the refusal is recorded (an OPTED_OUT
        tombstone), or the job would enrol someone who said no.
        Returns the audio file paths the caller must unlink. Then the WAL is checkpointed and
        truncated: it still held earlier page images of the deleted rows (secure_delete zeroes
        them in the database file only)."""
        def fn(c):
            t = now_ms()
            row = self._user_row(c, profile_id, user_id)
            if row is None:
                waiting = c.execute("SELECT 1 FROM recording_jobs WHERE " + UNFINISHED_JOB_WHERE.format("?", "?"),
                                    (profile_id, user_id)).fetchone()
                if not waiting:
                    return None, []
                self._insert_user(c, profile_id, user_id, "OPTED_OUT", t, opt_out_ts=t)
                row = self._user_row(c, profile_id, user_id)
            rid = row["row_id"]
            paths = [r["path"] for r in c.execute("SELECT path FROM audio WHERE user_row=?", (rid,))]
            for b in c.execute("SELECT key, value FROM biokeys WHERE user_row=?", (rid,)).fetchall():
                path = f'$."{b["key"]}"'             # biokey keys are [0-9A-Za-z_+-]: no quoting needed
                c.execute("UPDATE sessions SET custom=json_remove(custom, ?) WHERE profile_id=?"
                          " AND json_extract(custom, ?) = ?", (path, profile_id, path, b["value"]))
            for table in ("voiceprints", "biokeys", "audio", "fingerprints", "verification_stats", "passphrases"):
                c.execute(f"DELETE FROM {table} WHERE user_row=?", (rid,))
            # queued recording enrolments keep no biokeys of the user (they fail: opted out)
            c.execute(f"UPDATE recording_jobs SET {EMPTY_BIOKEYS} WHERE profile_id=? AND user_id=?", (profile_id, user_id))
            c.execute("UPDATE users SET status='OPTED_OUT', opt_out_ts=?, last_update_ms=? WHERE row_id=?", (t, t, rid))
            return self._user_by_row_id(c, rid), paths
        out = await self._tx(fn)
        if out[0] is not None:
            await self._run(self._truncate_wal)
        return out

    @staticmethod
    def _truncate_wal(c: sqlite3.Connection, quiet: bool = False) -> bool:
        """Checkpoint the WAL into the database and truncate it to zero bytes. Waits up to
        busy_timeout for other connections' readers; False if they still hold it."""
        busy, _, _ = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy and not quiet:
            log.error("wal_truncate_busy")
        return not busy

    async def audio_paths(self) -> list[str]:
        return await self._run(lambda c: [r[0] for r in c.execute("SELECT path FROM audio")])

    async def opt_in(self, profile_id, user_id) -> User | None:
        def fn(c):
            t = now_ms()
            row = self._user_row(c, profile_id, user_id)
            if row is None:
                return None                   # never enrolled: nothing to consent to, no row
            if row["status"] == "OPTED_OUT":
                c.execute("UPDATE users SET status='NOT_ENROLLED', opt_in_ts=?, last_update_ms=? WHERE row_id=?",
                          (t, t, row["row_id"]))
            return self._user_by_row_id(c, row["row_id"])
        return await self._tx(fn)

    async def voiceprints(self, profile_id, user_ids) -> dict[str, Voiceprint]:
        def fn(c):
            out = {}
            for uid in user_ids:
                r = c.execute("SELECT v.* FROM voiceprints v JOIN users u ON u.row_id=v.user_row"
                              " WHERE u.profile_id=? AND u.user_id=? AND u.status='ENROLLED'"
                              " ORDER BY v.id DESC LIMIT 1", (profile_id, uid)).fetchone()
                if r:
                    vec = open_opt(self.keys, r["vector"], r["key_id"], aad("voiceprints", r["user_row"]))
                    out[uid] = Voiceprint(r["id"], r["user_row"], vec, r["speech_ms"], r["model"],
                                          r["extractor_version"], r["plda_version"], r["created_ms"])
            return out
        return await self._run(fn)

    async def mark_re_enroll(self, profile_id, keep_model, keep_extractor) -> int:
        """Users whose voiceprint was built by another model cannot be scored: RE_ENROLL."""
        def fn(c):
            return c.execute(
                "UPDATE users SET status='RE_ENROLL' WHERE status='ENROLLED' AND profile_id=? AND row_id IN"
                " (SELECT user_row FROM voiceprints WHERE model<>?)", (profile_id, keep_model)).rowcount
        return await self._tx(fn)

    async def next_verification_id(self) -> int:
        def fn(c):
            c.execute("INSERT INTO counters VALUES ('verification', 1) ON CONFLICT (name)"
                      " DO UPDATE SET value=value+1")
            return c.execute("SELECT value FROM counters WHERE name='verification'").fetchone()[0]
        return await self._tx(fn)

    # -- Genesys AudioHook organisations -----------------------------------------------------
    @staticmethod
    def _audiohook_org(row) -> AudioHookOrg:
        return AudioHookOrg(row["org_id"], row["tenant_id"], row["profile_id"], row["api_key_hash"],
                            row["secret_enc"], row["created_ms"])

    async def save_audiohook_org(self, org: AudioHookOrg, replace: bool = False) -> None:
        def fn(c):
            if not replace and c.execute("SELECT 1 FROM audiohook_orgs WHERE org_id=?", (org.org_id,)).fetchone():
                raise Conflict(f"AudioHook organization {org.org_id} already exists (use --rotate to replace "
                               "its credentials)")
            c.execute("INSERT OR REPLACE INTO audiohook_orgs VALUES (?,?,?,?,?,?)",
                      (org.org_id, org.tenant_id, org.profile_id, org.api_key_hash, org.secret_enc, org.created_ms))
        await self._tx(fn)

    async def audiohook_org_by_key(self, api_key_hash: str) -> AudioHookOrg | None:
        def fn(c):
            row = c.execute("SELECT * FROM audiohook_orgs WHERE api_key_hash=?", (api_key_hash,)).fetchone()
            return self._audiohook_org(row) if row else None
        return await self._run(fn)

    async def get_audiohook_org(self, org_id: str) -> AudioHookOrg | None:
        def fn(c):
            row = c.execute("SELECT * FROM audiohook_orgs WHERE org_id=?", (org_id,)).fetchone()
            return self._audiohook_org(row) if row else None
        return await self._run(fn)

    async def list_audiohook_orgs(self) -> list[AudioHookOrg]:
        return await self._run(lambda c: [self._audiohook_org(r) for r in c.execute(
            "SELECT * FROM audiohook_orgs ORDER BY created_ms, org_id").fetchall()])

    async def delete_audiohook_org(self, org_id: str) -> bool:
        return await self._tx(lambda c: c.execute("DELETE FROM audiohook_orgs WHERE org_id=?",
                                                  (org_id,)).rowcount > 0)

    # -- NICE CXone business units -------------------------------------------------------------
    @staticmethod
    def _nice_bu(row) -> NiceBusinessUnit:
        return NiceBusinessUnit(row["bu_id"], row["tenant_id"], row["profile_id"], row["api_key_hash"],
                                row["created_ms"])

    async def save_nice_bu(self, bu: NiceBusinessUnit, replace: bool = False) -> None:
        def fn(c):
            if not replace and c.execute("SELECT 1 FROM nice_business_units WHERE bu_id=?", (bu.bu_id,)).fetchone():
                raise Conflict(f"NICE business unit {bu.bu_id} already exists (use --rotate to replace its API key)")
            c.execute("INSERT OR REPLACE INTO nice_business_units VALUES (?,?,?,?,?)",
                      (bu.bu_id, bu.tenant_id, bu.profile_id, bu.api_key_hash, bu.created_ms))
        await self._tx(fn)

    async def nice_bu_by_key(self, api_key_hash: str) -> NiceBusinessUnit | None:
        def fn(c):
            row = c.execute("SELECT * FROM nice_business_units WHERE api_key_hash=?", (api_key_hash,)).fetchone()
            return self._nice_bu(row) if row else None
        return await self._run(fn)

    async def get_nice_bu(self, bu_id: str) -> NiceBusinessUnit | None:
        def fn(c):
            row = c.execute("SELECT * FROM nice_business_units WHERE bu_id=?", (bu_id,)).fetchone()
            return self._nice_bu(row) if row else None
        return await self._run(fn)

    async def list_nice_bus(self) -> list[NiceBusinessUnit]:
        return await self._run(lambda c: [self._nice_bu(r) for r in c.execute(
            "SELECT * FROM nice_business_units ORDER BY created_ms, bu_id").fetchall()])

    async def delete_nice_bu(self, bu_id: str) -> bool:
        return await self._tx(lambda c: c.execute("DELETE FROM nice_business_units WHERE bu_id=?",
                                                  (bu_id,)).rowcount > 0)

    # -- fraud signals: blocklists and fingerprints ------------------------------------------
    @staticmethod
    def _blocklist(row, entries: int = 0) -> Blocklist:
        return Blocklist(row["id"], row["tenant_id"], row["group_id"], row["name"], row["description"],
                         row["risk_level"], row["custom_ui_message"], row["custom_agent_message"],
                         bool(row["active"]), row["created_ms"], row["updated_ms"], entries)

    def _entry(self, row) -> BlocklistEntry:
        vec = open_opt(self.keys, row["vector"], row["key_id"], aad("blocklist_entries", row["blocklist_id"]))
        return BlocklistEntry(row["id"], row["blocklist_id"], row["label"], row["source"], vec,
                              row["speech_ms"], row["model"], row["created_ms"])

    _BL_SELECT = ("SELECT b.*, (SELECT count(*) FROM blocklist_entries e WHERE e.blocklist_id=b.id) AS n"
                  " FROM blocklists b")

    async def create_blocklist(self, bl: Blocklist) -> Blocklist:
        def fn(c):
            if c.execute("SELECT 1 FROM blocklists WHERE group_id=? AND name=?", (bl.group_id, bl.name)).fetchone():
                raise Conflict(f"the group already has a blocklist named {bl.name!r}")
            t = now_ms()
            bid = "bl_" + uuid.uuid4().hex[:12]
            c.execute("INSERT INTO blocklists VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (bid, bl.tenant_id, bl.group_id, bl.name, bl.description, bl.risk_level,
                       bl.custom_ui_message, bl.custom_agent_message, int(bl.active), t, t))
            return self._blocklist(c.execute("SELECT * FROM blocklists WHERE id=?", (bid,)).fetchone())
        return await self._tx(fn)

    async def list_blocklists(self, group_id, active_only=False) -> list[Blocklist]:
        def fn(c):
            sql = self._BL_SELECT + " WHERE b.group_id=?" + (" AND b.active=1" if active_only else "")
            return [self._blocklist(r, r["n"]) for r in c.execute(sql + " ORDER BY b.created_ms, b.id", (group_id,))]
        return await self._run(fn)

    async def get_blocklist(self, group_id, blocklist_id) -> Blocklist | None:
        def fn(c):
            r = c.execute(self._BL_SELECT + " WHERE b.group_id=? AND b.id=?", (group_id, blocklist_id)).fetchone()
            return self._blocklist(r, r["n"]) if r else None
        return await self._run(fn)

    async def update_blocklist(self, group_id, blocklist_id, changes) -> Blocklist | None:
        allowed = {"name", "description", "risk_level", "custom_ui_message", "custom_agent_message", "active"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot change {sorted(bad)}")

        def fn(c):
            row = c.execute("SELECT * FROM blocklists WHERE group_id=? AND id=?", (group_id, blocklist_id)).fetchone()
            if row is None:
                return None
            if "name" in changes and changes["name"] != row["name"] and c.execute(
                    "SELECT 1 FROM blocklists WHERE group_id=? AND name=?", (group_id, changes["name"])).fetchone():
                raise Conflict(f"the group already has a blocklist named {changes['name']!r}")
            for k, v in changes.items():
                c.execute(f"UPDATE blocklists SET {k}=? WHERE id=?", (int(v) if k == "active" else v, blocklist_id))
            c.execute("UPDATE blocklists SET updated_ms=? WHERE id=?", (now_ms(), blocklist_id))
            r = c.execute(self._BL_SELECT + " WHERE b.id=?", (blocklist_id,)).fetchone()
            return self._blocklist(r, r["n"])
        return await self._tx(fn)

    async def delete_blocklist(self, group_id, blocklist_id) -> bool:
        def fn(c):
            return c.execute("DELETE FROM blocklists WHERE group_id=? AND id=?", (group_id, blocklist_id)).rowcount > 0
        return await self._tx(fn)

    async def add_blocklist_entry(self, group_id, blocklist_id, label, source, vector, speech_ms,
                                  model) -> BlocklistEntry | None:
        def fn(c):
            if not c.execute("SELECT 1 FROM blocklists WHERE group_id=? AND id=?", (group_id, blocklist_id)).fetchone():
                return None
            t = now_ms()
            vec, kid = seal_opt(self.keys, vector, aad("blocklist_entries", blocklist_id))
            c.execute("INSERT INTO blocklist_entries (blocklist_id, label, source, vector, speech_ms, model, created_ms,"
                      " key_id) VALUES (?,?,?,?,?,?,?,?)", (blocklist_id, label, source, vec, speech_ms, model, t, kid))
            eid = c.execute("SELECT last_insert_rowid()").fetchone()[0]
            c.execute("UPDATE blocklists SET updated_ms=? WHERE id=?", (t, blocklist_id))
            return self._entry(c.execute("SELECT * FROM blocklist_entries WHERE id=?", (eid,)).fetchone())
        return await self._tx(fn)

    async def blocklist_entries(self, group_id, blocklist_id) -> list[BlocklistEntry]:
        def fn(c):
            return [self._entry(r) for r in c.execute(
                "SELECT e.* FROM blocklist_entries e JOIN blocklists b ON b.id=e.blocklist_id"
                " WHERE b.group_id=? AND b.id=? ORDER BY e.id", (group_id, blocklist_id))]
        return await self._run(fn)

    async def delete_blocklist_entry(self, group_id, blocklist_id, entry_id) -> bool:
        def fn(c):
            return c.execute(
                "DELETE FROM blocklist_entries WHERE id=? AND blocklist_id IN"
                " (SELECT id FROM blocklists WHERE group_id=? AND id=?)",
                (entry_id, group_id, blocklist_id)).rowcount > 0
        return await self._tx(fn)

    async def active_blocklist_entries(self, group_id) -> list[tuple[Blocklist, list[BlocklistEntry]]]:
        def fn(c):
            out = []
            for r in c.execute(self._BL_SELECT + " WHERE b.group_id=? AND b.active=1 ORDER BY b.created_ms, b.id",
                               (group_id,)).fetchall():
                entries = [self._entry(e) for e in c.execute(
                    "SELECT * FROM blocklist_entries WHERE blocklist_id=? ORDER BY id", (r["id"],))]
                out.append((self._blocklist(r, len(entries)), entries))
            return out
        return await self._run(fn)

    async def add_fingerprint(self, profile_id, user_id, kind, dialog_id, hashes, keep_verify=20,
                              max_age_ms=None) -> bool:
        def fn(c):
            row = c.execute("SELECT row_id FROM users WHERE profile_id=? AND user_id=? AND status='ENROLLED'",
                            (profile_id, user_id)).fetchone()
            if row is None:
                return False
            rid = row["row_id"]
            # one fingerprint per (user, kind, dialog): a later one of the same call replaces it
            c.execute("DELETE FROM fingerprints WHERE user_row=? AND kind=? AND dialog_id=?", (rid, kind, dialog_id))
            sealed, kid = seal_opt(self.keys, hashes, aad("fingerprints", rid))
            c.execute("INSERT INTO fingerprints (user_row, kind, dialog_id, hashes, n, created_ms, key_id)"
                      " VALUES (?,?,?,?,?,?,?)", (rid, kind, dialog_id, sealed, len(hashes) // 8, now_ms(), kid))
            if kind == "VERIFY":
                c.execute("DELETE FROM fingerprints WHERE user_row=? AND kind='VERIFY' AND id NOT IN"
                          " (SELECT id FROM fingerprints WHERE user_row=? AND kind='VERIFY' ORDER BY id DESC LIMIT ?)",
                          (rid, rid, keep_verify))
                if max_age_ms is not None:
                    c.execute("DELETE FROM fingerprints WHERE user_row=? AND kind='VERIFY' AND created_ms<?",
                              (rid, now_ms() - max_age_ms))
            return True
        return await self._tx(fn)

    async def fingerprints(self, profile_id, user_id, ids=None) -> list[StoredFingerprint]:
        sql = ("SELECT f.* FROM fingerprints f JOIN users u ON u.row_id=f.user_row"
               " WHERE u.profile_id=? AND u.user_id=? AND u.status='ENROLLED'")
        wanted = None if ids is None else sorted(set(ids))

        def fn(c):
            if wanted is None:
                rows = c.execute(sql + " ORDER BY f.id", (profile_id, user_id)).fetchall()
            else:                   # in slices: SQLite's limit on bound parameters
                rows = []
                for i in range(0, len(wanted), 500):
                    part = wanted[i:i + 500]
                    rows += c.execute(sql + f" AND f.id IN ({','.join('?' * len(part))}) ORDER BY f.id",
                                      (profile_id, user_id, *part)).fetchall()
            return [StoredFingerprint(r["id"], r["kind"], r["dialog_id"],
                                      open_opt(self.keys, r["hashes"], r["key_id"], aad("fingerprints", r["user_row"])),
                                      r["created_ms"])
                    for r in rows]
        return await self._run(fn)

    async def fingerprint_refs(self, profile_id, user_id) -> list[FingerprintRef]:
        def fn(c):
            return [FingerprintRef(r["id"], r["kind"], r["dialog_id"])
                    for r in c.execute("SELECT f.id, f.kind, f.dialog_id FROM fingerprints f"
                                       " JOIN users u ON u.row_id=f.user_row"
                                       " WHERE u.profile_id=? AND u.user_id=? AND u.status='ENROLLED'"
                                       " ORDER BY f.id", (profile_id, user_id))]
        return await self._run(fn)

    # -- Aculab Users API: user group keys and verification counts ----------------------------
    async def create_user_group_key(self, tenant_id, group_id, profile_id, name, key_hash,
                                    settings=None) -> UserGroupKey:
        def fn(c):
            k = UserGroupKey("ugk_" + uuid.uuid4().hex[:12], tenant_id, group_id, profile_id, name,
                             settings or UserGroupKeySettings())
            c.execute("INSERT INTO user_group_keys (id, tenant_id, group_id, profile_id, name, key_hash, created_ms,"
                      " settings) VALUES (?,?,?,?,?,?,?,?)", (k.id, tenant_id, group_id, profile_id, name, key_hash,
                                                             now_ms(), key_settings_json(k.settings)))
            return k
        return await self._tx(fn)

    async def find_user_group_key(self, key_hash) -> UserGroupKey | None:
        def fn(c):
            r = c.execute("SELECT * FROM user_group_keys WHERE key_hash=? AND revoked=0", (key_hash,)).fetchone()
            return UserGroupKey(r["id"], r["tenant_id"], r["group_id"], r["profile_id"], r["name"],
                                key_settings(r["settings"])) if r else None
        return await self._run(fn)

    async def set_user_group_key_settings(self, key_id, settings) -> bool:
        def fn(c):
            return c.execute("UPDATE user_group_keys SET settings=? WHERE id=?",
                             (key_settings_json(settings), key_id)).rowcount > 0
        return await self._tx(fn)

    async def passphrase(self, profile_id, user_id) -> bytes | None:
        def fn(c):
            r = c.execute("SELECT p.* FROM passphrases p JOIN users u ON u.row_id=p.user_row WHERE u.profile_id=?"
                          " AND u.user_id=? AND u.status IN ('ENROLLED', 'RE_ENROLL')", (profile_id, user_id)).fetchone()
            return open_opt(self.keys, r["model"], r["key_id"], aad("passphrases", r["user_row"])) if r else None
        return await self._run(fn)

    async def list_user_group_keys(self, tenant_id=None) -> list[Credential]:
        return await self._credentials("user_group_keys", tenant_id)

    async def revoke_user_group_key(self, key_id) -> bool:
        return await self._revoke("user_group_keys", key_id)

    async def record_verification(self, profile_id, user_id, passed) -> None:
        def fn(c):
            row = c.execute("SELECT row_id FROM users WHERE profile_id=? AND user_id=? AND status='ENROLLED'",
                            (profile_id, user_id)).fetchone()
            if row is None:
                return
            c.execute("INSERT INTO verification_stats VALUES (?,1,?,?) ON CONFLICT (user_row) DO UPDATE SET"
                      " attempts=attempts+1, passed=passed+excluded.passed, last_ms=excluded.last_ms",
                      (row["row_id"], int(passed), now_ms()))
        await self._tx(fn)

    async def verification_stats(self, profile_id, user_id) -> VerificationStats | None:
        def fn(c):
            r = c.execute("SELECT s.* FROM verification_stats s JOIN users u ON u.row_id=s.user_row"
                          " WHERE u.profile_id=? AND u.user_id=?", (profile_id, user_id)).fetchone()
            return VerificationStats(r["attempts"], r["passed"], r["last_ms"]) if r else None
        return await self._run(fn)

    async def add_aculab_call(self, call: AculabCall, keep_ms: int) -> None:
        def fn(c):
            c.execute("DELETE FROM aculab_calls WHERE created_ms<?", (now_ms() - keep_ms,))
            c.execute("INSERT INTO aculab_calls (instance_id, profile_id, action, status, cost_micros, created_ms)"
                      " VALUES (?,?,?,?,?,?)", (call.instance_id, call.profile_id, call.action, call.status,
                                                call.cost_micros, call.created_ms))
        await self._tx(fn)

    async def update_aculab_call(self, instance_id: str, status: str, cost_micros: int) -> bool:
        def fn(c):
            return c.execute("UPDATE aculab_calls SET status=?, cost_micros=? WHERE instance_id=? AND status<>'DONE'",
                             (status, cost_micros, instance_id)).rowcount > 0
        return await self._tx(fn)

    async def get_aculab_call(self, profile_id: str, instance_id: str) -> AculabCall | None:
        def fn(c):
            r = c.execute("SELECT * FROM aculab_calls WHERE instance_id=? AND profile_id=?",
                          (instance_id, profile_id)).fetchone()
            return AculabCall(r["instance_id"], r["profile_id"], r["action"], r["status"], r["cost_micros"],
                              r["created_ms"]) if r else None
        return await self._run(fn)

    # -- encryption at rest and re-keying of hashed biokeys -----------------------------------
    async def key_usage(self) -> dict[str, dict[str | None, int]]:
        def fn(c):
            out: dict[str, dict[str | None, int]] = {}
            for table, _, _ in SEALED:
                out[table] = {r[0]: r[1] for r in c.execute(f"SELECT key_id, count(*) FROM {table} GROUP BY key_id")}
            out["biokeys"] = {r[0]: r[1] for r in c.execute(
                "SELECT value_key_id, count(*) FROM biokeys WHERE value_enc IS NOT NULL GROUP BY value_key_id")}
            out["recording_jobs"] = {r[0]: r[1] for r in c.execute(
                "SELECT biokeys_key_id, count(*) FROM recording_jobs WHERE biokeys_enc IS NOT NULL"
                " GROUP BY biokeys_key_id")}
            return out
        return await self._run(fn)

    async def reencrypt(self, batch: int = 200) -> int:
        keys = self.keys
        if keys is None:
            return 0
        active = keys.active_id

        def fn(c):
            done = 0
            for table, col, owner in SEALED:
                rows = c.execute(f"SELECT id, {owner} AS owner, {col} AS blob, key_id FROM {table}"
                                 " WHERE key_id IS NULL OR key_id<>? LIMIT ?", (active, batch - done)).fetchall()
                for r in rows:
                    ad = aad(table, r["owner"])
                    blob, kid = keys.seal(open_opt(keys, r["blob"], r["key_id"], ad), ad)
                    c.execute(f"UPDATE {table} SET {col}=?, key_id=? WHERE id=? AND key_id IS ?",
                              (blob, kid, r["id"], r["key_id"]))
                done += len(rows)
                if done >= batch:
                    return done
            rows = c.execute("SELECT user_row, key, value_enc, value_key_id FROM biokeys WHERE value_enc IS NOT NULL"
                             " AND value_key_id<>? LIMIT ?", (active, batch - done)).fetchall()
            for r in rows:
                ad = aad("biokeys", r["user_row"], r["key"])
                blob, kid = keys.seal(open_opt(keys, r["value_enc"], r["value_key_id"], ad), ad)
                c.execute("UPDATE biokeys SET value_enc=?, value_key_id=? WHERE user_row=? AND key=?",
                          (blob, kid, r["user_row"], r["key"]))
            done += len(rows)
            if done >= batch:
                return done
            rows = c.execute("SELECT id, biokeys_enc, biokeys_key_id FROM recording_jobs WHERE biokeys_enc IS NOT NULL"
                             " AND biokeys_key_id IS NOT ? LIMIT ?", (active, batch - done)).fetchall()
            for r in rows:
                ad = job_aad(r["id"])
                blob, kid = keys.seal(open_opt(keys, r["biokeys_enc"], r["biokeys_key_id"], ad), ad)
                c.execute("UPDATE recording_jobs SET biokeys_enc=?, biokeys_key_id=? WHERE id=?", (blob, kid, r["id"]))
            return done + len(rows)
        return await self._tx(fn)

    async def hash_key_usage(self) -> list[HashKeyUsage]:
        def fn(c):
            return [HashKeyUsage(r[0], r[1], r[2]) for r in c.execute(
                "SELECT hash_key_id, count(*), count(value_enc) FROM biokeys WHERE sensitive=1"
                " GROUP BY hash_key_id ORDER BY hash_key_id")]
        return await self._run(fn)

    async def stamp_legacy_hashes(self, key_id: str) -> int:
        return await self._tx(lambda c: c.execute(
            "UPDATE biokeys SET hash_key_id=? WHERE sensitive=1 AND hash_key_id IS NULL", (key_id,)).rowcount)

    async def rekey_biokeys(self, key_id: str, hasher, batch: int = 200) -> int:
        keys = self.keys

        def fn(c):
            rows = c.execute(
                "SELECT b.user_row, b.key, b.value_enc, b.value_key_id, u.profile_id FROM biokeys b"
                " JOIN users u ON u.row_id=b.user_row WHERE b.sensitive=1 AND b.value_enc IS NOT NULL"
                " AND (b.hash_key_id IS NULL OR b.hash_key_id<>?) LIMIT ?", (key_id, batch)).fetchall()
            for r in rows:
                plain = open_opt(keys, r["value_enc"], r["value_key_id"], aad("biokeys", r["user_row"], r["key"]))
                c.execute("UPDATE biokeys SET value=?, hash_key_id=? WHERE user_row=? AND key=?",
                          (hasher(r["profile_id"], r["key"], plain.decode()), key_id, r["user_row"], r["key"]))
            return len(rows)
        return await self._tx(fn)

    # -- enrolment jobs from CCaaS recordings ----------------------------------------------
    async def create_recording_job(self, job) -> None:
        sql = (f"INSERT INTO recording_jobs ({', '.join(ROW_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
        await self._tx(lambda c: c.execute(sql, recording_job_values(job, self.keys)))

    async def get_recording_job(self, job_id) -> RecordingJob | None:
        def fn(c):
            r = c.execute("SELECT * FROM recording_jobs WHERE id=?", (job_id,)).fetchone()
            return recording_job_from_row(r, self.keys) if r else None
        return await self._run(fn)

    async def active_recording_job(self, profile_id, provider, ccaas_session_id, user_id) -> RecordingJob | None:
        def fn(c):
            r = c.execute("SELECT * FROM recording_jobs WHERE profile_id=? AND provider=? AND ccaas_session_id=?"
                          " AND user_id=? AND status IN ('QUEUED', 'RUNNING') ORDER BY created_ms LIMIT 1",
                          (profile_id, provider, ccaas_session_id, user_id)).fetchone()
            return recording_job_from_row(r, self.keys) if r else None
        return await self._run(fn)

    async def claim_recording_jobs(self, now_ms_, limit) -> list[RecordingJob]:
        def fn(c):
            ids = [r["id"] for r in c.execute(
                "SELECT id FROM recording_jobs WHERE status='QUEUED' AND next_attempt_ms<=?"
                " ORDER BY next_attempt_ms, created_ms LIMIT ?", (now_ms_, limit))]
            out = []
            for i in ids:
                c.execute("UPDATE recording_jobs SET status='RUNNING', stage='FETCHING', updated_ms=? WHERE id=?",
                          (now_ms_, i))
                out.append(recording_job_from_row(c.execute("SELECT * FROM recording_jobs WHERE id=?", (i,)).fetchone(),
                                                  self.keys))
            return out
        return await self._tx(fn)

    async def update_recording_job(self, job) -> None:
        def fn(c):
            c.execute("UPDATE recording_jobs SET status=?, stage=?, attempts=?, next_attempt_ms=?, error_code=?,"
                      " error_message=?, speech_ms=?, updated_ms=?, finished_ms=? WHERE id=?",
                      (job.status, job.stage, job.attempts, job.next_attempt_ms, job.error_code, job.error_message,
                       job.speech_ms, job.updated_ms, job.finished_ms, job.id))
            if job.status in ("SUCCEEDED", "FAILED"):
                c.execute(f"UPDATE recording_jobs SET {EMPTY_BIOKEYS} WHERE id=?", (job.id,))
        await self._tx(fn)

    async def recording_jobs_with_status(self, status) -> list[RecordingJob]:
        def fn(c):
            return [recording_job_from_row(r, self.keys) for r in c.execute(
                "SELECT * FROM recording_jobs WHERE status=? ORDER BY created_ms", (status,))]
        return await self._run(fn)

    async def next_recording_job_ms(self) -> int | None:
        return await self._run(lambda c: c.execute(
            "SELECT MIN(next_attempt_ms) FROM recording_jobs WHERE status='QUEUED'").fetchone()[0])

    async def purge_recording_jobs(self, finished_before_ms) -> int:
        return await self._tx(lambda c: c.execute(
            "DELETE FROM recording_jobs WHERE status IN ('SUCCEEDED', 'FAILED') AND finished_ms<?",
            (finished_before_ms,)).rowcount)

    async def enrolled_since(self, profile_id, user_id, dialog_id, since_ms) -> bool:
        def fn(c):
            return c.execute(
                "SELECT 1 FROM voiceprints v JOIN users u ON u.row_id=v.user_row WHERE u.profile_id=? AND"
                " u.user_id=? AND u.status='ENROLLED' AND v.dialog_id=? AND v.created_ms>=?",
                (profile_id, user_id, dialog_id, since_ms)).fetchone() is not None
        return await self._run(fn)
