"""SQLite (WAL) repository. All SQL runs on one dedicated thread with one connection, so
the event loop never blocks and writes are serialised; every enrolment is committed (and
synced, synchronous=FULL) before the coroutine returns."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from gateway.store.base import (
    AudioHookOrg, Conflict, EnrolmentWrite, Group, OptedOutError, Pat, Profile, ProfileSettings, Repository,
    SessionRecord, StoredBiokey, Tenant, User, Voiceprint,
)

# Versioned schema migrations: index i brings the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
    CREATE TABLE groups (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL, created_ms INTEGER NOT NULL, UNIQUE (tenant_id, name));
    CREATE TABLE profiles (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id),
        group_id TEXT NOT NULL REFERENCES groups(id), name TEXT NOT NULL, settings TEXT NOT NULL,
        created_ms INTEGER NOT NULL, UNIQUE (tenant_id, name));
    CREATE TABLE pats (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, group_id TEXT NOT NULL REFERENCES groups(id),
        name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, group_id TEXT NOT NULL,
        profile_id TEXT NOT NULL, master_id TEXT NOT NULL, agent_id TEXT NOT NULL, agent_skill TEXT NOT NULL,
        ccaas_provider TEXT NOT NULL, custom TEXT NOT NULL, created_ms INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL);
    CREATE INDEX sessions_master ON sessions (tenant_id, master_id);
    CREATE TABLE users (row_id INTEGER PRIMARY KEY AUTOINCREMENT, profile_id TEXT NOT NULL REFERENCES profiles(id),
        user_id TEXT NOT NULL, status TEXT NOT NULL, created_ms INTEGER NOT NULL,
        last_update_ms INTEGER NOT NULL, opt_out_ts INTEGER, opt_in_ts INTEGER,
        UNIQUE (profile_id, user_id));
    CREATE TABLE biokeys (user_row INTEGER NOT NULL REFERENCES users(row_id) ON DELETE CASCADE,
        key TEXT NOT NULL, value TEXT NOT NULL, sensitive INTEGER NOT NULL, PRIMARY KEY (user_row, key));
    CREATE INDEX biokeys_kv ON biokeys (key, value);
    CREATE TABLE voiceprints (id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_row INTEGER NOT NULL REFERENCES users(row_id) ON DELETE CASCADE,
        vector BLOB NOT NULL, speech_ms INTEGER NOT NULL, model TEXT NOT NULL,
        extractor_version TEXT NOT NULL, plda_version TEXT NOT NULL, dialog_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL);
    CREATE TABLE audio (id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_row INTEGER NOT NULL REFERENCES users(row_id) ON DELETE CASCADE,
        path TEXT NOT NULL, created_ms INTEGER NOT NULL);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # 2: Genesys AudioHook organisations (API key hashed, client secret encrypted).
    """
    CREATE TABLE audiohook_orgs (org_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id),
        profile_id TEXT, api_key_hash TEXT NOT NULL UNIQUE, secret_enc TEXT, created_ms INTEGER NOT NULL);
    """,
]


def now_ms() -> int:
    return int(time.time() * 1000)


class SqliteRepository(Repository):
    def __init__(self, path: Path):
        self.path = Path(path)
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        except Exception:
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

    async def get_user(self, profile_id, user_id) -> User | None:
        def fn(c):
            row = c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (profile_id, user_id)).fetchone()
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
            row = c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (w.profile_id, w.user_id)).fetchone()
            if row is None:
                c.execute("INSERT INTO users (profile_id, user_id, status, created_ms, last_update_ms, opt_in_ts)"
                          " VALUES (?,?,?,?,?,?)", (w.profile_id, w.user_id, "ENROLLED", t, t, t if w.opt_in else None))
                row_id = c.execute("SELECT last_insert_rowid()").fetchone()[0]
            else:
                row_id = row["row_id"]
                if row["status"] == "OPTED_OUT" and not w.opt_in:
                    raise OptedOutError(f"user {w.user_id!r} opted out; enrolling again needs an explicit opt-in")
                opt_in_ts = t if (w.opt_in and row["status"] == "OPTED_OUT") else row["opt_in_ts"]
                c.execute("UPDATE users SET status='ENROLLED', last_update_ms=?, opt_in_ts=? WHERE row_id=?",
                          (t, opt_in_ts, row_id))
                c.execute("DELETE FROM voiceprints WHERE user_row=?", (row_id,))
            for bk in w.biokeys:
                c.execute("INSERT INTO biokeys VALUES (?,?,?,?) ON CONFLICT (user_row, key) DO UPDATE"
                          " SET value=excluded.value, sensitive=excluded.sensitive",
                          (row_id, bk.key, bk.value, int(bk.sensitive)))
            c.execute("INSERT INTO voiceprints (user_row, vector, speech_ms, model, extractor_version,"
                      " plda_version, dialog_id, created_ms) VALUES (?,?,?,?,?,?,?,?)",
                      (row_id, w.vector, w.speech_ms, w.model, w.extractor_version, w.plda_version, w.dialog_id, t))
            vp_id = c.execute("SELECT last_insert_rowid()").fetchone()[0]
            for p in w.audio_paths:
                c.execute("INSERT INTO audio (user_row, path, created_ms) VALUES (?,?,?)", (row_id, p, t))
            user = self._user(c, c.execute("SELECT * FROM users WHERE row_id=?", (row_id,)).fetchone())
            return user, Voiceprint(vp_id, row_id, w.vector, w.speech_ms, w.model, w.extractor_version,
                                    w.plda_version, t)
        return await self._tx(fn)

    async def opt_out(self, profile_id, user_id) -> tuple[User, list[str]]:
        """Deletes voiceprints, biokeys and audio records; keeps an OPTED_OUT tombstone (the
        user id and timestamps only). Returns the audio file paths the caller must unlink."""
        def fn(c):
            t = now_ms()
            row = c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (profile_id, user_id)).fetchone()
            if row is None:
                c.execute("INSERT INTO users (profile_id, user_id, status, created_ms, last_update_ms, opt_out_ts)"
                          " VALUES (?,?,?,?,?,?)", (profile_id, user_id, "OPTED_OUT", t, t, t))
                row = c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (profile_id, user_id)).fetchone()
                return self._user(c, row), []
            rid = row["row_id"]
            paths = [r["path"] for r in c.execute("SELECT path FROM audio WHERE user_row=?", (rid,))]
            for table in ("voiceprints", "biokeys", "audio"):
                c.execute(f"DELETE FROM {table} WHERE user_row=?", (rid,))
            c.execute("UPDATE users SET status='OPTED_OUT', opt_out_ts=?, last_update_ms=? WHERE row_id=?", (t, t, rid))
            return self._user(c, c.execute("SELECT * FROM users WHERE row_id=?", (rid,)).fetchone()), paths
        return await self._tx(fn)

    async def opt_in(self, profile_id, user_id) -> User:
        def fn(c):
            t = now_ms()
            row = c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (profile_id, user_id)).fetchone()
            if row is None:
                c.execute("INSERT INTO users (profile_id, user_id, status, created_ms, last_update_ms, opt_in_ts)"
                          " VALUES (?,?,?,?,?,?)", (profile_id, user_id, "NOT_ENROLLED", t, t, t))
            elif row["status"] == "OPTED_OUT":
                c.execute("UPDATE users SET status='NOT_ENROLLED', opt_in_ts=?, last_update_ms=? WHERE row_id=?",
                          (t, t, row["row_id"]))
            row = c.execute("SELECT * FROM users WHERE profile_id=? AND user_id=?", (profile_id, user_id)).fetchone()
            return self._user(c, row)
        return await self._tx(fn)

    async def voiceprints(self, profile_id, user_ids) -> dict[str, Voiceprint]:
        def fn(c):
            out = {}
            for uid in user_ids:
                r = c.execute("SELECT v.* FROM voiceprints v JOIN users u ON u.row_id=v.user_row"
                              " WHERE u.profile_id=? AND u.user_id=? AND u.status='ENROLLED'"
                              " ORDER BY v.id DESC LIMIT 1", (profile_id, uid)).fetchone()
                if r:
                    out[uid] = Voiceprint(r["id"], r["user_row"], r["vector"], r["speech_ms"], r["model"],
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
