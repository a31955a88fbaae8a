"""PostgreSQL repository (asyncpg), chosen by `storage.dsn = "postgresql://..."`.

The driver is imported only when this store is opened, so SQLite-only installations never
load it. Semantics are the SQLite store's (tests/store/test_repository.py runs one suite
against both); what PostgreSQL adds is concurrency from several connections (and later several
gateway instances), so every write that reads a user's state first locks the user's row
(`SELECT ... FOR UPDATE`): enrolments, opt-out/in, fingerprints and verification counts of one
user are serialised, as they are on SQLite's single writer thread.

Failures (docs/security.md, README): the store is opened by the gateway in the background
until PostgreSQL is reachable (`/readyz` says not ready meanwhile). A call while the database
is unreachable raises `StoreUnavailable` (HTTP 503 STORE_UNAVAILABLE). Each call runs in one
transaction; if the connection is lost (PostgreSQL restarted, network cut) before the commit was
sent, the server rolled the transaction back, so the call is retried on a fresh connection with
backoff for up to `storage.retry_s`, then fails with StoreUnavailable. If the connection is lost
while the COMMIT itself is in flight, nobody can know whether it was applied: the call fails with
a StoreUnavailable that says so and is not retried (retrying could apply a write twice). A write
is never half-done: all of it is in one transaction."""
from __future__ import annotations

import asyncio
import json
import re
import uuid
import zlib
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import structlog

from gateway.infra.clock import now_ms
from gateway.store.base import (
    AculabCall, AudioHookOrg, Blocklist, BlocklistEntry, Conflict, Credential, EnrolmentWrite, Group, HashKeyUsage, OptedOutError, Pat,
    NiceBusinessUnit, Profile, ProfileSettings, RecordingJob, Repository, SessionRecord, StoredBiokey,
    FingerprintRef, StoredFingerprint, StoreUnavailable, Tenant, User, UserGroupKey, UserGroupKeySettings, VerificationStats,
    Voiceprint, key_settings, key_settings_json,
)
from gateway.store.keys import DataKeys, aad, open_opt, seal_opt
from gateway.store.migrations import MIGRATIONS, SEALED
from gateway.store.recording_jobs import (
    EMPTY_BIOKEYS, ROW_COLUMNS, UNFINISHED_JOB_WHERE, job_aad, recording_job_from_row, recording_job_values,
)

log = structlog.get_logger(__name__)

SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")




def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for log lines and errors."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "postgresql://(unparsable dsn)"


def _count(status: str) -> int:
    """Rows affected, from a command status such as 'DELETE 3'."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except (ValueError, AttributeError):
        return 0


def _classify(exc: BaseException) -> str | None:
    """'lost': the connection is gone or not possible yet (the server rolled back whatever was
    open); 'conflict': the server refused the transaction and rolled it back (serialisation
    failure, deadlock); None: any other error, which is the caller's."""
    import asyncpg
    if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                        asyncpg.exceptions.TooManyConnectionsError, OSError, asyncio.TimeoutError)):
        return "lost"
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return "lost"
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # The client's protocol state no longer matches the server's (seen when a server shut
        # down under a waiting statement): the connection is terminated, which ends the
        # transaction on the server, and the call is treated like a lost connection.
        return "lost"
    if isinstance(exc, asyncpg.exceptions.TransactionRollbackError):
        return "conflict"
    return None


def _terminate(conn) -> None:
    """Close a pooled connection at once (already gone or detached from the pool: nothing to do)."""
    try:
        conn.terminate()
    except Exception:  # noqa: BLE001 - the driver raises many types; all mean the connection is in doubt
        pass


class PostgresRepository(Repository):
    retry_open = True     # the gateway keeps trying to open it in the background (app.py)

    def __init__(self, dsn: str, keys: DataKeys | None = None, schema: str = "", pool_min: int = 1,
                 pool_max: int = 10, connect_timeout_s: float = 5.0, retry_s: float = 10.0,
                 command_timeout_s: float = 30.0):
        if schema and not SCHEMA_RE.match(schema):
            raise ValueError("storage.schema must be a lower-case SQL identifier")
        self.dsn = dsn
        self.keys: DataKeys | None = keys
        self.schema = schema
        self.pool_min, self.pool_max = pool_min, pool_max
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self.command_timeout_s = command_timeout_s
        self._pool: Any = None
        self._open_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresRepository({redact_dsn(self.dsn)!r}, schema={self.schema!r})"

    @property
    def where(self) -> str:
        return redact_dsn(self.dsn) + (f" (schema {self.schema})" if self.schema else "")

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    # -- plumbing ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and migrate; StoreUnavailable (one attempt) if PostgreSQL cannot be reached."""
        import asyncpg
        async with self._open_lock:
            if self._pool is not None:
                return
            settings = {"search_path": self.schema} if self.schema else {}
            try:
                pool = await asyncpg.create_pool(
                    self.dsn, min_size=self.pool_min, max_size=self.pool_max, timeout=self.connect_timeout_s,
                    command_timeout=self.command_timeout_s, server_settings=settings)
            except Exception as exc:
                if _classify(exc) != "lost":
                    raise
                raise StoreUnavailable(f"PostgreSQL at {self.where} is not reachable: "
                                       f"{type(exc).__name__}: {exc}") from None
            try:
                await self._migrate(pool)
            except BaseException as exc:
                pool.terminate()
                if _classify(exc) == "lost":
                    raise StoreUnavailable(f"PostgreSQL at {self.where} was lost while migrating: "
                                           f"{type(exc).__name__}") from None
                raise
            self._pool = pool

    async def _migrate(self, pool) -> None:
        # One advisory lock per schema: instances starting together migrate one at a time.
        lock = zlib.crc32(f"vbgw-migrate:{self.schema}".encode())
        async with pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
                if self.schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                                   " description TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
            for m in MIGRATIONS:
                async with conn.transaction():     # a migration is applied whole or not at all
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
                    if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version=$1", m.version):
                        continue
                    await conn.execute(m.postgres)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                                       m.version, m.description, now_ms())
                    log.info("store.migrated", version=m.version, description=m.description)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the driver raises many types; all mean the connection is in doubt
                pool.terminate()

    async def ping(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        try:
            async with pool.acquire(timeout=2) as conn:
                return await conn.fetchval("SELECT 1", timeout=2) == 1
        except Exception:  # noqa: BLE001 - the driver raises many types; all mean the connection is in doubt
            return False

    async def _tx(self, fn: Callable[[Any], Awaitable[Any]], idempotent: bool = False) -> Any:
        """Run fn(conn) in one transaction, retrying on a lost connection or a serialisation
        conflict (see the module docstring for what is retried and what fails)."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"the database ({self.where}) is not reachable yet; retrying in the background")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        delay = 0.05
        while True:
            committing = False
            try:
                async with pool.acquire(timeout=self.connect_timeout_s) as conn:
                    tr = conn.transaction()
                    try:
                        await tr.start()
                        out = await fn(conn)
                        committing = True
                        await tr.commit()
                        return out
                    except BaseException as exc:
                        if _classify(exc) == "lost" or committing:
                            _terminate(conn)   # never hand a connection in doubt back to the pool
                        else:
                            try:
                                await tr.rollback()
                            except Exception:  # noqa: BLE001 - the connection broke: the server rolled back
                                _terminate(conn)
                        raise
            except Exception as exc:
                kind = _classify(exc)
                if kind is None:
                    raise
                if kind == "conflict":               # rolled back by the server: try again
                    await asyncio.sleep(delay)
                    continue
                if committing and not idempotent:
                    log.error("store.commit_outcome_unknown", error=type(exc).__name__)
                    raise StoreUnavailable("the connection to PostgreSQL was lost while committing; the write may "
                                           "or may not have been stored: check and repeat it") from None
                await pool.expire_connections()       # the others are likely dead too (restart)
                if loop.time() + delay > deadline:
                    log.error("store.unavailable", error=type(exc).__name__, retried_s=self.retry_s)
                    raise StoreUnavailable(f"PostgreSQL ({self.where}) is not reachable "
                                           f"({type(exc).__name__}); nothing was written") from None
                log.warning("store.retry", error=type(exc).__name__, retry_in_s=round(delay, 3))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _read(self, fn: Callable[[Any], Awaitable[Any]]) -> Awaitable[Any]:
        return self._tx(fn, idempotent=True)

    # -- tenancy ----------------------------------------------------------------------------
    async def ensure_tenant(self, name: str) -> Tenant:
        async def fn(c):
            await c.execute("INSERT INTO tenants VALUES ($1,$2,$3) ON CONFLICT (name) DO NOTHING",
                            "ten_" + uuid.uuid4().hex[:12], name, now_ms())
            row = await c.fetchrow("SELECT id, name FROM tenants WHERE name=$1", name)
            return Tenant(row["id"], row["name"])
        return await self._tx(fn, idempotent=True)

    async def get_tenant(self, id_or_name: str) -> Tenant | None:
        async def fn(c):
            row = await c.fetchrow("SELECT id, name FROM tenants WHERE id=$1 OR name=$1 ORDER BY id=$1 DESC LIMIT 1",
                                   id_or_name)
            return Tenant(row["id"], row["name"]) if row else None
        return await self._read(fn)

    async def ensure_group(self, tenant_id: str, name: str) -> Group:
        async def fn(c):
            await c.execute("INSERT INTO groups VALUES ($1,$2,$3,$4) ON CONFLICT (tenant_id, name) DO NOTHING",
                            "grp_" + uuid.uuid4().hex[:12], tenant_id, name, now_ms())
            row = await c.fetchrow("SELECT id FROM groups WHERE tenant_id=$1 AND name=$2", tenant_id, name)
            return Group(row["id"], tenant_id, name)
        return await self._tx(fn, idempotent=True)

    async def get_group(self, group_id: str) -> Group | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM groups WHERE id=$1", group_id)
            return Group(row["id"], row["tenant_id"], row["name"]) if row else None
        return await self._read(fn)

    @staticmethod
    def _profile(row) -> Profile:
        return Profile(row["id"], row["tenant_id"], row["group_id"], row["name"],
                       ProfileSettings.model_validate_json(row["settings"]))

    async def create_profile(self, tenant_id, group_id, name, settings) -> Profile:
        async def fn(c):
            pid = "prof_" + uuid.uuid4().hex[:12]
            done = await c.execute("INSERT INTO profiles VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (tenant_id, name)"
                                   " DO NOTHING", pid, tenant_id, group_id, name, settings.model_dump_json(), now_ms())
            if _count(done) == 0:
                raise Conflict(f"profile {name!r} already exists")
            return Profile(pid, tenant_id, group_id, name, settings)
        return await self._tx(fn)

    async def get_profile(self, tenant_id, id_or_name) -> Profile | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM profiles WHERE tenant_id=$1 AND (id=$2 OR name=$2)"
                                   " ORDER BY id=$2 DESC LIMIT 1", tenant_id, id_or_name)
            return self._profile(row) if row else None
        return await self._read(fn)

    async def list_profiles(self, tenant_id=None) -> list[Profile]:
        async def fn(c):
            if tenant_id is None:
                rows = await c.fetch("SELECT * FROM profiles ORDER BY created_ms, id")
            else:
                rows = await c.fetch("SELECT * FROM profiles WHERE tenant_id=$1 ORDER BY created_ms, id", tenant_id)
            return [self._profile(r) for r in rows]
        return await self._read(fn)

    async def create_pat(self, tenant_id, group_id, name, token_hash) -> Pat:
        async def fn(c):
            p = Pat("pat_" + uuid.uuid4().hex[:12], tenant_id, group_id, name)
            await c.execute("INSERT INTO pats (id, tenant_id, group_id, name, token_hash, created_ms)"
                            " VALUES ($1,$2,$3,$4,$5,$6)", p.id, tenant_id, group_id, name, token_hash, now_ms())
            return p
        return await self._tx(fn)

    async def find_pat(self, token_hash) -> Pat | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM pats WHERE token_hash=$1 AND revoked=0", token_hash)
            return Pat(row["id"], row["tenant_id"], row["group_id"], row["name"]) if row else None
        return await self._read(fn)

    async def _credentials(self, table: str, tenant_id: str | None) -> list[Credential]:
        async def fn(c):
            rows = await c.fetch(f"SELECT * FROM {table} WHERE $1::text IS NULL OR tenant_id=$1"
                                 " ORDER BY created_ms, id", tenant_id)
            return [Credential(r["id"], r["tenant_id"], r["group_id"], r["profile_id"] if "profile_id" in r.keys()
                               else None, r["name"], r["created_ms"], bool(r["revoked"])) for r in rows]
        return await self._read(fn)

    async def _revoke(self, table: str, id_: str) -> bool:
        async def fn(c):
            return _count(await c.execute(f"UPDATE {table} SET revoked=1 WHERE id=$1", id_)) > 0
        return await self._tx(fn, idempotent=True)

    async def list_pats(self, tenant_id=None) -> list[Credential]:
        return await self._credentials("pats", tenant_id)

    async def revoke_pat(self, pat_id) -> bool:
        return await self._revoke("pats", pat_id)

    # -- session tokens ---------------------------------------------------------------------
    async def create_session(self, rec: SessionRecord) -> None:
        async def fn(c):
            await c.execute("INSERT INTO sessions VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
                            rec.token_hash, rec.tenant_id, rec.group_id, rec.profile_id, rec.master_id,
                            rec.agent_id, rec.agent_skill, rec.ccaas_provider,
                            json.dumps(rec.custom_properties), rec.created_ms, rec.last_used_ms)
        await self._tx(fn)

    async def get_session(self, token_hash) -> SessionRecord | None:
        async def fn(c):
            r = await c.fetchrow("SELECT * FROM sessions WHERE token_hash=$1", token_hash)
            if not r:
                return None
            return SessionRecord(r["token_hash"], r["tenant_id"], r["group_id"], r["profile_id"],
                                 r["master_id"], r["agent_id"], r["agent_skill"], r["ccaas_provider"],
                                 json.loads(r["custom"]), r["created_ms"], r["last_used_ms"])
        return await self._read(fn)

    async def touch_session(self, token_hash, now) -> None:
        async def fn(c):
            await c.execute("UPDATE sessions SET last_used_ms=$1 WHERE token_hash=$2", now, token_hash)
        await self._tx(fn, idempotent=True)

    async def purge_sessions(self, older_than_ms) -> int:
        async def fn(c):
            return _count(await c.execute("DELETE FROM sessions WHERE last_used_ms < $1", older_than_ms))
        return await self._tx(fn, idempotent=True)

    # -- users ------------------------------------------------------------------------------
    @staticmethod
    async def _user(c, row) -> User:
        bks = tuple(StoredBiokey(b["key"], b["value"], bool(b["sensitive"])) for b in await c.fetch(
            "SELECT key, value, sensitive FROM biokeys WHERE user_row=$1 ORDER BY key", row["row_id"]))
        return User(row["row_id"], row["profile_id"], row["user_id"], row["status"], row["created_ms"],
                    row["last_update_ms"], row["opt_out_ts"], row["opt_in_ts"], bks)

    async def _user_by_row_id(self, c, row_id) -> User:
        return await self._user(c, await c.fetchrow("SELECT * FROM users WHERE row_id=$1", row_id))

    @staticmethod
    async def _locked_user(c, profile_id, user_id):
        """The user's row, locked for the rest of the transaction (None if there is none)."""
        return await c.fetchrow("SELECT * FROM users WHERE profile_id=$1 AND user_id=$2 FOR UPDATE",
                                profile_id, user_id)

    async def _lock_or_insert_user(self, c, profile_id, user_id, status, t, opt_in_ts=None):
        """(locked existing row, None) or (None, row id of a new row); concurrent callers for the
        same user wait for each other on the row lock or the unique index."""
        row = await self._locked_user(c, profile_id, user_id)
        if row is not None:
            return row, None
        rid = await c.fetchval(
            "INSERT INTO users (profile_id, user_id, status, created_ms, last_update_ms, opt_in_ts)"
            " VALUES ($1,$2,$3,$4,$4,$5) ON CONFLICT (profile_id, user_id) DO NOTHING RETURNING row_id",
            profile_id, user_id, status, t, opt_in_ts)
        if rid is not None:
            return None, rid
        return await self._locked_user(c, profile_id, user_id), None   # lost the race: it exists now

    async def get_user(self, profile_id, user_id) -> User | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM users WHERE profile_id=$1 AND user_id=$2", profile_id, user_id)
            return await self._user(c, row) if row else None
        return await self._read(fn)

    async def search_users(self, profile_id, biokeys) -> list[User]:
        """Users of the profile whose biokeys match every (key, stored value) pair given."""
        async def fn(c):
            if not biokeys:
                return []
            sql = "SELECT u.* FROM users u WHERE u.profile_id=$1"
            args: list = [profile_id]
            for key, value in biokeys:
                sql += (f" AND EXISTS (SELECT 1 FROM biokeys b WHERE b.user_row=u.row_id AND b.key=${len(args) + 1}"
                        f" AND b.value=${len(args) + 2})")
                args += [key, value]
            rows = await c.fetch(sql + " ORDER BY u.user_id LIMIT 100", *args)
            return [await self._user(c, r) for r in rows]
        return await self._read(fn)

    async def enrol(self, w: EnrolmentWrite) -> tuple[User, Voiceprint]:
        async def fn(c):
            t = now_ms()
            row, row_id = await self._lock_or_insert_user(c, w.profile_id, w.user_id, "ENROLLED", t,
                                                          opt_in_ts=t if w.opt_in else None)
            if row is not None:
                row_id = row["row_id"]
                if w.require_new and row["status"] in ("ENROLLED", "RE_ENROLL"):
                    raise Conflict(f"user {w.user_id!r} is already enrolled")
                if row["status"] == "OPTED_OUT" and not w.opt_in:
                    raise OptedOutError(f"user {w.user_id!r} opted out; enrolling again needs an explicit opt-in")
                opt_in_ts = t if (w.opt_in and row["status"] == "OPTED_OUT") else row["opt_in_ts"]
                await c.execute("UPDATE users SET status='ENROLLED', last_update_ms=$1, opt_in_ts=$2 WHERE row_id=$3",
                                t, opt_in_ts, row_id)
                await c.execute("DELETE FROM voiceprints WHERE user_row=$1", row_id)
            for bk in w.biokeys:
                # the clear value of a sensitive key is kept only sealed, never without a data key
                enc, enc_kid = (self.keys.seal(bk.plain.encode(), aad("biokeys", row_id, bk.key))
                                if bk.sensitive and bk.plain is not None and self.keys else (None, None))
                await c.execute(
                    "INSERT INTO biokeys (user_row, key, value, sensitive, hash_key_id, value_enc, value_key_id)"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (user_row, key) DO UPDATE"
                    " SET value=excluded.value, sensitive=excluded.sensitive, hash_key_id=excluded.hash_key_id,"
                    " value_enc=excluded.value_enc, value_key_id=excluded.value_key_id",
                    row_id, bk.key, bk.value, int(bk.sensitive), bk.hash_key_id if bk.sensitive else None,
                    enc, enc_kid)
            vec, vkid = seal_opt(self.keys, w.vector, aad("voiceprints", row_id))
            vp_id = await c.fetchval(
                "INSERT INTO voiceprints (user_row, vector, speech_ms, model, extractor_version, plda_version,"
                " dialog_id, created_ms, key_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) RETURNING id",
                row_id, vec, w.speech_ms, w.model, w.extractor_version, w.plda_version, w.dialog_id, t, vkid)
            for p in w.audio_paths:
                await c.execute("INSERT INTO audio (user_row, path, created_ms) VALUES ($1,$2,$3)", row_id, p, t)
            if w.fingerprint:
                fp, fkid = seal_opt(self.keys, w.fingerprint, aad("fingerprints", row_id))
                await c.execute("INSERT INTO fingerprints (user_row, kind, dialog_id, hashes, n, created_ms, key_id)"
                                " VALUES ($1,'ENROL',$2,$3,$4,$5,$6)", row_id, w.dialog_id, fp,
                                len(w.fingerprint) // 8, t, fkid)
            if w.passphrase is not None:
                pp, pkid = seal_opt(self.keys, w.passphrase, aad("passphrases", row_id))
                await c.execute("INSERT INTO passphrases (user_row, model, created_ms, updated_ms, key_id)"
                                " VALUES ($1,$2,$3,$3,$4) ON CONFLICT (user_row) DO UPDATE SET model=excluded.model,"
                                " updated_ms=excluded.updated_ms, key_id=excluded.key_id", row_id, pp, t, pkid)
            return await self._user_by_row_id(c, row_id), Voiceprint(
                vp_id, row_id, w.vector, w.speech_ms, w.model, w.extractor_version, w.plda_version, t)
        return await self._tx(fn)

    async def opt_out(self, profile_id, user_id) -> tuple[User | None, list[str]]:
        """Deletes voiceprints, biokeys, audio records, audio fingerprints and verification counts;
        keeps an OPTED_OUT tombstone (the user id and timestamps only). The user's biokey values
        also leave the customProperties of the profile's sessions. A user with no row gets none
        (None): nothing is stored about them, unless a recording job would enrol them: then the
        refusal is recorded (an OPTED_OUT tombstone). Returns the audio file paths the caller must
        unlink. (SQLite then truncates its WAL; PostgreSQL's dead tuples go with VACUUM,
        docs/security.md.)"""
        async def fn(c):
            t = now_ms()
            row = await self._locked_user(c, profile_id, user_id)
            if row is None:
                waiting = await c.fetchval("SELECT 1 FROM recording_jobs WHERE "
                                           + UNFINISHED_JOB_WHERE.format("$1", "$2"), profile_id, user_id)
                if not waiting:
                    return None, []
                row, new_rid = await self._lock_or_insert_user(c, profile_id, user_id, "OPTED_OUT", t)
                if row is None:
                    row = await c.fetchrow("SELECT * FROM users WHERE row_id=$1", new_rid)
            rid = row["row_id"]
            paths = [r["path"] for r in await c.fetch("SELECT path FROM audio WHERE user_row=$1 ORDER BY id", rid)]
            for b in await c.fetch("SELECT key, value FROM biokeys WHERE user_row=$1", rid):
                await c.execute("UPDATE sessions SET custom=(custom::jsonb - $2::text)::text WHERE profile_id=$1"
                                " AND custom::jsonb ->> $2::text = $3", profile_id, b["key"], b["value"])
            for table in ("voiceprints", "biokeys", "audio", "fingerprints", "verification_stats", "passphrases"):
                await c.execute(f"DELETE FROM {table} WHERE user_row=$1", rid)
            # queued recording enrolments keep no biokeys of the user (they fail: opted out)
            await c.execute(f"UPDATE recording_jobs SET {EMPTY_BIOKEYS} WHERE profile_id=$1 AND user_id=$2",
                            profile_id, user_id)
            await c.execute("UPDATE users SET status='OPTED_OUT', opt_out_ts=$1, last_update_ms=$1 WHERE row_id=$2",
                            t, rid)
            return await self._user_by_row_id(c, rid), paths
        return await self._tx(fn)

    async def audio_paths(self) -> list[str]:
        async def fn(c):
            return [r["path"] for r in await c.fetch("SELECT path FROM audio")]
        return await self._read(fn)

    async def opt_in(self, profile_id, user_id) -> User | None:
        async def fn(c):
            t = now_ms()
            row = await self._locked_user(c, profile_id, user_id)
            if row is None:
                return None                   # never enrolled: nothing to consent to, no row
            if row["status"] == "OPTED_OUT":
                await c.execute("UPDATE users SET status='NOT_ENROLLED', opt_in_ts=$1, last_update_ms=$1"
                                " WHERE row_id=$2", t, row["row_id"])
            return await self._user_by_row_id(c, row["row_id"])
        return await self._tx(fn)

    async def voiceprints(self, profile_id, user_ids) -> dict[str, Voiceprint]:
        async def fn(c):
            rows = await c.fetch(
                "SELECT DISTINCT ON (u.user_id) u.user_id, v.* FROM voiceprints v JOIN users u ON u.row_id=v.user_row"
                " WHERE u.profile_id=$1 AND u.user_id = ANY($2::text[]) AND u.status='ENROLLED'"
                " ORDER BY u.user_id, v.id DESC", profile_id, list(user_ids))
            out = {}
            for r in rows:
                vec = open_opt(self.keys, r["vector"], r["key_id"], aad("voiceprints", r["user_row"]))
                out[r["user_id"]] = Voiceprint(r["id"], r["user_row"], vec, r["speech_ms"], r["model"],
                                               r["extractor_version"], r["plda_version"], r["created_ms"])
            return {uid: out[uid] for uid in user_ids if uid in out}
        return await self._read(fn)

    async def mark_re_enroll(self, profile_id, keep_model, keep_extractor) -> int:
        """Users whose voiceprint was built by another model cannot be scored: RE_ENROLL."""
        async def fn(c):
            return _count(await c.execute(
                "UPDATE users SET status='RE_ENROLL' WHERE status='ENROLLED' AND profile_id=$1 AND row_id IN"
                " (SELECT user_row FROM voiceprints WHERE model<>$2)", profile_id, keep_model))
        return await self._tx(fn, idempotent=True)

    async def next_verification_id(self) -> int:
        async def fn(c):
            return await c.fetchval("INSERT INTO counters VALUES ('verification', 1) ON CONFLICT (name)"
                                    " DO UPDATE SET value=counters.value+1 RETURNING value")
        return await self._tx(fn)

    # -- Genesys AudioHook organisations -----------------------------------------------------
    @staticmethod
    def _audiohook_org(row) -> AudioHookOrg:
        return AudioHookOrg(row["org_id"], row["tenant_id"], row["profile_id"], row["api_key_hash"],
                            row["secret_enc"], row["created_ms"])

    async def save_audiohook_org(self, org: AudioHookOrg, replace: bool = False) -> None:
        async def fn(c):
            if await c.fetchval("SELECT 1 FROM audiohook_orgs WHERE org_id=$1 FOR UPDATE", org.org_id):
                if not replace:
                    raise Conflict(f"AudioHook organization {org.org_id} already exists (use --rotate to replace "
                                   "its credentials)")
                await c.execute("DELETE FROM audiohook_orgs WHERE org_id=$1", org.org_id)
            await c.execute("INSERT INTO audiohook_orgs VALUES ($1,$2,$3,$4,$5,$6)", org.org_id, org.tenant_id,
                            org.profile_id, org.api_key_hash, org.secret_enc, org.created_ms)
        await self._tx(fn)

    async def audiohook_org_by_key(self, api_key_hash: str) -> AudioHookOrg | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM audiohook_orgs WHERE api_key_hash=$1", api_key_hash)
            return self._audiohook_org(row) if row else None
        return await self._read(fn)

    async def get_audiohook_org(self, org_id: str) -> AudioHookOrg | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM audiohook_orgs WHERE org_id=$1", org_id)
            return self._audiohook_org(row) if row else None
        return await self._read(fn)

    async def list_audiohook_orgs(self) -> list[AudioHookOrg]:
        async def fn(c):
            return [self._audiohook_org(r) for r in await c.fetch("SELECT * FROM audiohook_orgs"
                                                                  " ORDER BY created_ms, org_id")]
        return await self._read(fn)

    async def delete_audiohook_org(self, org_id: str) -> bool:
        async def fn(c):
            return _count(await c.execute("DELETE FROM audiohook_orgs WHERE org_id=$1", org_id)) > 0
        return await self._tx(fn, idempotent=True)

    # -- NICE CXone business units -------------------------------------------------------------
    @staticmethod
    def _nice_bu(row) -> NiceBusinessUnit:
        return NiceBusinessUnit(row["bu_id"], row["tenant_id"], row["profile_id"], row["api_key_hash"],
                                row["created_ms"])

    async def save_nice_bu(self, bu: NiceBusinessUnit, replace: bool = False) -> None:
        async def fn(c):
            if await c.fetchval("SELECT 1 FROM nice_business_units WHERE bu_id=$1 FOR UPDATE", bu.bu_id):
                if not replace:
                    raise Conflict(f"NICE business unit {bu.bu_id} already exists (use --rotate to replace its "
                                   "API key)")
                await c.execute("DELETE FROM nice_business_units WHERE bu_id=$1", bu.bu_id)
            await c.execute("INSERT INTO nice_business_units VALUES ($1,$2,$3,$4,$5)", bu.bu_id, bu.tenant_id,
                            bu.profile_id, bu.api_key_hash, bu.created_ms)
        await self._tx(fn)

    async def nice_bu_by_key(self, api_key_hash: str) -> NiceBusinessUnit | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM nice_business_units WHERE api_key_hash=$1", api_key_hash)
            return self._nice_bu(row) if row else None
        return await self._read(fn)

    async def get_nice_bu(self, bu_id: str) -> NiceBusinessUnit | None:
        async def fn(c):
            row = await c.fetchrow("SELECT * FROM nice_business_units WHERE bu_id=$1", bu_id)
            return self._nice_bu(row) if row else None
        return await self._read(fn)

    async def list_nice_bus(self) -> list[NiceBusinessUnit]:
        async def fn(c):
            return [self._nice_bu(r) for r in await c.fetch("SELECT * FROM nice_business_units"
                                                            " ORDER BY created_ms, bu_id")]
        return await self._read(fn)

    async def delete_nice_bu(self, bu_id: str) -> bool:
        async def fn(c):
            return _count(await c.execute("DELETE FROM nice_business_units WHERE bu_id=$1", bu_id)) > 0
        return await self._tx(fn, idempotent=True)

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
        async def fn(c):
            t = now_ms()
            bid = "bl_" + uuid.uuid4().hex[:12]
            row = await c.fetchrow(
                "INSERT INTO blocklists VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$10) ON CONFLICT (group_id, name)"
                " DO NOTHING RETURNING *", bid, bl.tenant_id, bl.group_id, bl.name, bl.description, bl.risk_level,
                bl.custom_ui_message, bl.custom_agent_message, int(bl.active), t)
            if row is None:
                raise Conflict(f"the group already has a blocklist named {bl.name!r}")
            return self._blocklist(row)
        return await self._tx(fn)

    async def list_blocklists(self, group_id, active_only=False) -> list[Blocklist]:
        async def fn(c):
            sql = self._BL_SELECT + " WHERE b.group_id=$1" + (" AND b.active=1" if active_only else "")
            return [self._blocklist(r, r["n"]) for r in await c.fetch(sql + " ORDER BY b.created_ms, b.id", group_id)]
        return await self._read(fn)

    async def get_blocklist(self, group_id, blocklist_id) -> Blocklist | None:
        async def fn(c):
            r = await c.fetchrow(self._BL_SELECT + " WHERE b.group_id=$1 AND b.id=$2", group_id, blocklist_id)
            return self._blocklist(r, r["n"]) if r else None
        return await self._read(fn)

    async def update_blocklist(self, group_id, blocklist_id, changes) -> Blocklist | None:
        allowed = {"name", "description", "risk_level", "custom_ui_message", "custom_agent_message", "active"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot change {sorted(bad)}")

        async def fn(c):
            row = await c.fetchrow("SELECT * FROM blocklists WHERE group_id=$1 AND id=$2 FOR UPDATE",
                                   group_id, blocklist_id)
            if row is None:
                return None
            if "name" in changes and changes["name"] != row["name"] and await c.fetchval(
                    "SELECT 1 FROM blocklists WHERE group_id=$1 AND name=$2", group_id, changes["name"]):
                raise Conflict(f"the group already has a blocklist named {changes['name']!r}")
            for k, v in changes.items():
                await c.execute(f"UPDATE blocklists SET {k}=$1 WHERE id=$2", int(v) if k == "active" else v,
                                blocklist_id)
            await c.execute("UPDATE blocklists SET updated_ms=$1 WHERE id=$2", now_ms(), blocklist_id)
            r = await c.fetchrow(self._BL_SELECT + " WHERE b.id=$1", blocklist_id)
            return self._blocklist(r, r["n"])
        return await self._tx(fn)

    async def delete_blocklist(self, group_id, blocklist_id) -> bool:
        async def fn(c):
            return _count(await c.execute("DELETE FROM blocklists WHERE group_id=$1 AND id=$2",
                                          group_id, blocklist_id)) > 0
        return await self._tx(fn)

    async def add_blocklist_entry(self, group_id, blocklist_id, label, source, vector, speech_ms,
                                  model) -> BlocklistEntry | None:
        async def fn(c):
            if not await c.fetchval("SELECT 1 FROM blocklists WHERE group_id=$1 AND id=$2 FOR UPDATE",
                                    group_id, blocklist_id):
                return None
            t = now_ms()
            vec, kid = seal_opt(self.keys, vector, aad("blocklist_entries", blocklist_id))
            row = await c.fetchrow(
                "INSERT INTO blocklist_entries (blocklist_id, label, source, vector, speech_ms, model, created_ms,"
                " key_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING *",
                blocklist_id, label, source, vec, speech_ms, model, t, kid)
            await c.execute("UPDATE blocklists SET updated_ms=$1 WHERE id=$2", t, blocklist_id)
            return self._entry(row)
        return await self._tx(fn)

    async def blocklist_entries(self, group_id, blocklist_id) -> list[BlocklistEntry]:
        async def fn(c):
            return [self._entry(r) for r in await c.fetch(
                "SELECT e.* FROM blocklist_entries e JOIN blocklists b ON b.id=e.blocklist_id"
                " WHERE b.group_id=$1 AND b.id=$2 ORDER BY e.id", group_id, blocklist_id)]
        return await self._read(fn)

    async def delete_blocklist_entry(self, group_id, blocklist_id, entry_id) -> bool:
        async def fn(c):
            return _count(await c.execute(
                "DELETE FROM blocklist_entries WHERE id=$1 AND blocklist_id IN"
                " (SELECT id FROM blocklists WHERE group_id=$2 AND id=$3)", entry_id, group_id, blocklist_id)) > 0
        return await self._tx(fn)

    async def active_blocklist_entries(self, group_id) -> list[tuple[Blocklist, list[BlocklistEntry]]]:
        async def fn(c):
            out = []
            for r in await c.fetch(self._BL_SELECT + " WHERE b.group_id=$1 AND b.active=1 ORDER BY b.created_ms, b.id",
                                   group_id):
                entries = [self._entry(e) for e in await c.fetch(
                    "SELECT * FROM blocklist_entries WHERE blocklist_id=$1 ORDER BY id", r["id"])]
                out.append((self._blocklist(r, len(entries)), entries))
            return out
        return await self._read(fn)

    async def _enrolled_row_id(self, c, profile_id, user_id) -> int | None:
        """The locked row id of an ENROLLED user (an opt-out in flight finishes first)."""
        return await c.fetchval("SELECT row_id FROM users WHERE profile_id=$1 AND user_id=$2 AND status='ENROLLED'"
                                " FOR UPDATE", profile_id, user_id)

    async def add_fingerprint(self, profile_id, user_id, kind, dialog_id, hashes, keep_verify=20,
                              max_age_ms=None) -> bool:
        async def fn(c):
            rid = await self._enrolled_row_id(c, profile_id, user_id)
            if rid is None:
                return False
            # one fingerprint per (user, kind, dialog): a later one of the same call replaces it
            await c.execute("DELETE FROM fingerprints WHERE user_row=$1 AND kind=$2 AND dialog_id=$3",
                            rid, kind, dialog_id)
            sealed, kid = seal_opt(self.keys, hashes, aad("fingerprints", rid))
            await c.execute("INSERT INTO fingerprints (user_row, kind, dialog_id, hashes, n, created_ms, key_id)"
                            " VALUES ($1,$2,$3,$4,$5,$6,$7)", rid, kind, dialog_id, sealed, len(hashes) // 8,
                            now_ms(), kid)
            if kind == "VERIFY":
                await c.execute(
                    "DELETE FROM fingerprints WHERE user_row=$1 AND kind='VERIFY' AND id NOT IN"
                    " (SELECT id FROM fingerprints WHERE user_row=$1 AND kind='VERIFY' ORDER BY id DESC LIMIT $2)",
                    rid, keep_verify)
                if max_age_ms is not None:
                    await c.execute("DELETE FROM fingerprints WHERE user_row=$1 AND kind='VERIFY' AND created_ms<$2",
                                    rid, now_ms() - max_age_ms)
            return True
        return await self._tx(fn)

    async def fingerprints(self, profile_id, user_id, ids=None) -> list[StoredFingerprint]:
        sql = ("SELECT f.* FROM fingerprints f JOIN users u ON u.row_id=f.user_row"
               " WHERE u.profile_id=$1 AND u.user_id=$2 AND u.status='ENROLLED'")

        async def fn(c):
            if ids is None:
                rows = await c.fetch(sql + " ORDER BY f.id", profile_id, user_id)
            else:
                rows = await c.fetch(sql + " AND f.id = ANY($3::bigint[]) ORDER BY f.id",
                                     profile_id, user_id, sorted(set(ids)))
            return [StoredFingerprint(r["id"], r["kind"], r["dialog_id"],
                                      open_opt(self.keys, r["hashes"], r["key_id"], aad("fingerprints", r["user_row"])),
                                      r["created_ms"])
                    for r in rows]
        return await self._read(fn)

    async def fingerprint_refs(self, profile_id, user_id) -> list[FingerprintRef]:
        async def fn(c):
            return [FingerprintRef(r["id"], r["kind"], r["dialog_id"])
                    for r in await c.fetch("SELECT f.id, f.kind, f.dialog_id FROM fingerprints f"
                                           " JOIN users u ON u.row_id=f.user_row"
                                           " WHERE u.profile_id=$1 AND u.user_id=$2 AND u.status='ENROLLED'"
                                           " ORDER BY f.id", profile_id, user_id)]
        return await self._read(fn)

    # -- Aculab Users API: user group keys and verification counts ----------------------------
    async def create_user_group_key(self, tenant_id, group_id, profile_id, name, key_hash,
                                    settings=None) -> UserGroupKey:
        async def fn(c):
            k = UserGroupKey("ugk_" + uuid.uuid4().hex[:12], tenant_id, group_id, profile_id, name,
                             settings or UserGroupKeySettings())
            await c.execute("INSERT INTO user_group_keys (id, tenant_id, group_id, profile_id, name, key_hash,"
                            " created_ms, settings) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                            k.id, tenant_id, group_id, profile_id, name, key_hash, now_ms(),
                            key_settings_json(k.settings))
            return k
        return await self._tx(fn)

    async def find_user_group_key(self, key_hash) -> UserGroupKey | None:
        async def fn(c):
            r = await c.fetchrow("SELECT * FROM user_group_keys WHERE key_hash=$1 AND revoked=0", key_hash)
            return UserGroupKey(r["id"], r["tenant_id"], r["group_id"], r["profile_id"], r["name"],
                                key_settings(r["settings"])) if r else None
        return await self._read(fn)

    async def set_user_group_key_settings(self, key_id, settings) -> bool:
        async def fn(c):
            return _count(await c.execute("UPDATE user_group_keys SET settings=$1 WHERE id=$2",
                                          key_settings_json(settings), key_id)) > 0
        return await self._tx(fn)

    async def passphrase(self, profile_id, user_id) -> bytes | None:
        async def fn(c):
            r = await c.fetchrow("SELECT p.* FROM passphrases p JOIN users u ON u.row_id=p.user_row"
                                 " WHERE u.profile_id=$1 AND u.user_id=$2 AND u.status IN ('ENROLLED', 'RE_ENROLL')",
                                 profile_id, user_id)
            return open_opt(self.keys, r["model"], r["key_id"], aad("passphrases", r["user_row"])) if r else None
        return await self._read(fn)

    async def list_user_group_keys(self, tenant_id=None) -> list[Credential]:
        return await self._credentials("user_group_keys", tenant_id)

    async def revoke_user_group_key(self, key_id) -> bool:
        return await self._revoke("user_group_keys", key_id)

    async def record_verification(self, profile_id, user_id, passed) -> None:
        async def fn(c):
            rid = await self._enrolled_row_id(c, profile_id, user_id)
            if rid is None:
                return
            await c.execute("INSERT INTO verification_stats VALUES ($1,1,$2,$3) ON CONFLICT (user_row) DO UPDATE SET"
                            " attempts=verification_stats.attempts+1,"
                            " passed=verification_stats.passed+excluded.passed, last_ms=excluded.last_ms",
                            rid, int(passed), now_ms())
        await self._tx(fn)

    async def verification_stats(self, profile_id, user_id) -> VerificationStats | None:
        async def fn(c):
            r = await c.fetchrow("SELECT s.* FROM verification_stats s JOIN users u ON u.row_id=s.user_row"
                                 " WHERE u.profile_id=$1 AND u.user_id=$2", profile_id, user_id)
            return VerificationStats(r["attempts"], r["passed"], r["last_ms"]) if r else None
        return await self._read(fn)

    async def add_aculab_call(self, call: AculabCall, keep_ms: int) -> None:
        async def fn(c):
            await c.execute("DELETE FROM aculab_calls WHERE created_ms<$1", now_ms() - keep_ms)
            await c.execute("INSERT INTO aculab_calls (instance_id, profile_id, action, status, cost_micros,"
                            " created_ms) VALUES ($1,$2,$3,$4,$5,$6)", call.instance_id, call.profile_id,
                            call.action, call.status, call.cost_micros, call.created_ms)
        await self._tx(fn)

    async def update_aculab_call(self, instance_id: str, status: str, cost_micros: int) -> bool:
        async def fn(c):
            done = await c.execute("UPDATE aculab_calls SET status=$1, cost_micros=$2 WHERE instance_id=$3"
                                   " AND status<>'DONE'", status, cost_micros, instance_id)
            return done != "UPDATE 0"
        return await self._tx(fn)

    async def get_aculab_call(self, profile_id: str, instance_id: str) -> AculabCall | None:
        async def fn(c):
            r = await c.fetchrow("SELECT * FROM aculab_calls WHERE instance_id=$1 AND profile_id=$2",
                                 instance_id, profile_id)
            return AculabCall(r["instance_id"], r["profile_id"], r["action"], r["status"], r["cost_micros"],
                              r["created_ms"]) if r else None
        return await self._read(fn)

    # -- enrolment jobs from CCaaS recordings ----------------------------------------------
    async def create_recording_job(self, job: RecordingJob) -> None:
        sql = (f"INSERT INTO recording_jobs ({', '.join(ROW_COLUMNS)}) "
               f"VALUES ({', '.join(f'${i}' for i in range(1, len(ROW_COLUMNS) + 1))})")

        async def fn(c):
            await c.execute(sql, *recording_job_values(job, self.keys))
        await self._tx(fn)

    async def get_recording_job(self, job_id: str) -> RecordingJob | None:
        async def fn(c):
            r = await c.fetchrow("SELECT * FROM recording_jobs WHERE id=$1", job_id)
            return recording_job_from_row(r, self.keys) if r else None
        return await self._read(fn)

    async def active_recording_job(self, profile_id, provider, ccaas_session_id, user_id) -> RecordingJob | None:
        async def fn(c):
            r = await c.fetchrow("SELECT * FROM recording_jobs WHERE profile_id=$1 AND provider=$2"
                                 " AND ccaas_session_id=$3 AND user_id=$4 AND status IN ('QUEUED', 'RUNNING')"
                                 " ORDER BY created_ms LIMIT 1", profile_id, provider, ccaas_session_id, user_id)
            return recording_job_from_row(r, self.keys) if r else None
        return await self._read(fn)

    async def claim_recording_jobs(self, now_ms: int, limit: int) -> list[RecordingJob]:
        """One statement: the due rows are locked with SKIP LOCKED, so claimers on other
        connections (or other gateway instances) pass over them instead of waiting, and a row a
        claimer committed as RUNNING no longer matches the re-checked `status='QUEUED'`: no job
        is claimed twice."""
        async def fn(c):
            rows = await c.fetch(
                "UPDATE recording_jobs SET status='RUNNING', stage='FETCHING', updated_ms=$1 WHERE id IN"
                " (SELECT id FROM recording_jobs WHERE status='QUEUED' AND next_attempt_ms<=$1"
                "  ORDER BY next_attempt_ms, created_ms LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING *", now_ms, limit)
            jobs = [recording_job_from_row(r, self.keys) for r in rows]
            return sorted(jobs, key=lambda j: (j.next_attempt_ms, j.created_ms))   # RETURNING has no order
        return await self._tx(fn)

    async def update_recording_job(self, job: RecordingJob) -> None:
        async def fn(c):
            await c.execute(
                "UPDATE recording_jobs SET status=$1, stage=$2, attempts=$3, next_attempt_ms=$4, error_code=$5,"
                " error_message=$6, speech_ms=$7, updated_ms=$8, finished_ms=$9 WHERE id=$10",
                job.status, job.stage, job.attempts, job.next_attempt_ms, job.error_code, job.error_message,
                job.speech_ms, job.updated_ms, job.finished_ms, job.id)
            if job.status in ("SUCCEEDED", "FAILED"):
                await c.execute(f"UPDATE recording_jobs SET {EMPTY_BIOKEYS} WHERE id=$1", job.id)
        await self._tx(fn, idempotent=True)

    async def recording_jobs_with_status(self, status: str) -> list[RecordingJob]:
        async def fn(c):
            return [recording_job_from_row(r, self.keys) for r in await c.fetch(
                "SELECT * FROM recording_jobs WHERE status=$1 ORDER BY created_ms", status)]
        return await self._read(fn)

    async def next_recording_job_ms(self) -> int | None:
        async def fn(c):
            return await c.fetchval("SELECT MIN(next_attempt_ms) FROM recording_jobs WHERE status='QUEUED'")
        return await self._read(fn)

    async def purge_recording_jobs(self, finished_before_ms: int) -> int:
        async def fn(c):
            return _count(await c.execute("DELETE FROM recording_jobs WHERE status IN ('SUCCEEDED', 'FAILED')"
                                          " AND finished_ms<$1", finished_before_ms))
        return await self._tx(fn, idempotent=True)

    async def enrolled_since(self, profile_id: str, user_id: str, dialog_id: str, since_ms: int) -> bool:
        async def fn(c):
            return await c.fetchval(
                "SELECT 1 FROM voiceprints v JOIN users u ON u.row_id=v.user_row WHERE u.profile_id=$1 AND"
                " u.user_id=$2 AND u.status='ENROLLED' AND v.dialog_id=$3 AND v.created_ms>=$4",
                profile_id, user_id, dialog_id, since_ms) is not None
        return await self._read(fn)

    # -- encryption at rest and re-keying of hashed biokeys -----------------------------------
    async def key_usage(self) -> dict[str, dict[str | None, int]]:
        async def fn(c):
            out: dict[str, dict[str | None, int]] = {}
            for table, _, _ in SEALED:
                out[table] = {r[0]: r[1] for r in await c.fetch(
                    f"SELECT key_id, count(*) FROM {table} GROUP BY key_id")}
            out["biokeys"] = {r[0]: r[1] for r in await c.fetch(
                "SELECT value_key_id, count(*) FROM biokeys WHERE value_enc IS NOT NULL GROUP BY value_key_id")}
            out["recording_jobs"] = {r[0]: r[1] for r in await c.fetch(
                "SELECT biokeys_key_id, count(*) FROM recording_jobs WHERE biokeys_enc IS NOT NULL"
                " GROUP BY biokeys_key_id")}
            return out
        return await self._read(fn)

    async def reencrypt(self, batch: int = 200) -> int:
        keys = self.keys
        if keys is None:
            return 0
        active = keys.active_id

        async def fn(c):
            done = 0
            for table, col, owner in SEALED:
                # SKIP LOCKED: a row a live write holds is re-sealed by a later batch
                rows = await c.fetch(f"SELECT id, {owner} AS owner, {col} AS blob, key_id FROM {table}"
                                     " WHERE key_id IS DISTINCT FROM $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                                     active, batch - done)
                for r in rows:
                    ad = aad(table, r["owner"])
                    blob, kid = keys.seal(open_opt(keys, r["blob"], r["key_id"], ad), ad)
                    await c.execute(f"UPDATE {table} SET {col}=$1, key_id=$2 WHERE id=$3", blob, kid, r["id"])
                done += len(rows)
                if done >= batch:
                    return done
            rows = await c.fetch("SELECT user_row, key, value_enc, value_key_id FROM biokeys WHERE value_enc IS NOT NULL"
                                 " AND value_key_id IS DISTINCT FROM $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                                 active, batch - done)
            for r in rows:
                ad = aad("biokeys", r["user_row"], r["key"])
                blob, kid = keys.seal(open_opt(keys, r["value_enc"], r["value_key_id"], ad), ad)
                await c.execute("UPDATE biokeys SET value_enc=$1, value_key_id=$2 WHERE user_row=$3 AND key=$4",
                                blob, kid, r["user_row"], r["key"])
            done += len(rows)
            if done >= batch:
                return done
            rows = await c.fetch("SELECT id, biokeys_enc, biokeys_key_id FROM recording_jobs WHERE biokeys_enc IS NOT"
                                 " NULL AND biokeys_key_id IS DISTINCT FROM $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                                 active, batch - done)
            for r in rows:
                ad = job_aad(r["id"])
                blob, kid = keys.seal(open_opt(keys, r["biokeys_enc"], r["biokeys_key_id"], ad), ad)
                await c.execute("UPDATE recording_jobs SET biokeys_enc=$1, biokeys_key_id=$2 WHERE id=$3",
                                blob, kid, r["id"])
            return done + len(rows)
        return await self._tx(fn, idempotent=True)

    async def hash_key_usage(self) -> list[HashKeyUsage]:
        async def fn(c):
            return [HashKeyUsage(r[0], r[1], r[2]) for r in await c.fetch(
                "SELECT hash_key_id, count(*), count(value_enc) FROM biokeys WHERE sensitive=1"
                " GROUP BY hash_key_id ORDER BY hash_key_id")]
        return await self._read(fn)

    async def stamp_legacy_hashes(self, key_id: str) -> int:
        async def fn(c):
            return _count(await c.execute("UPDATE biokeys SET hash_key_id=$1 WHERE sensitive=1 AND hash_key_id IS NULL",
                                          key_id))
        return await self._tx(fn, idempotent=True)

    async def rekey_biokeys(self, key_id: str, hasher, batch: int = 200) -> int:
        keys = self.keys

        async def fn(c):
            rows = await c.fetch(
                "SELECT b.user_row, b.key, b.value_enc, b.value_key_id, u.profile_id FROM biokeys b"
                " JOIN users u ON u.row_id=b.user_row WHERE b.sensitive=1 AND b.value_enc IS NOT NULL"
                " AND b.hash_key_id IS DISTINCT FROM $1 LIMIT $2 FOR UPDATE OF b SKIP LOCKED", key_id, batch)
            for r in rows:
                plain = open_opt(keys, r["value_enc"], r["value_key_id"], aad("biokeys", r["user_row"], r["key"]))
                await c.execute("UPDATE biokeys SET value=$1, hash_key_id=$2 WHERE user_row=$3 AND key=$4",
                                hasher(r["profile_id"], r["key"], plain.decode()), key_id, r["user_row"], r["key"])
            return len(rows)
        return await self._tx(fn, idempotent=True)
