"""One migration list, two dialects: both stores reach the same version with the same tables
and columns (a version or column added to one dialect only fails here), and a database at an
older version is upgraded in place with its data kept."""
from __future__ import annotations

import sqlite3

import asyncpg

import services
from gateway.store.migrations import MIGRATIONS, SCHEMA_VERSION
from gateway.store.postgres import PostgresRepository
from gateway.store.sqlite import SqliteRepository
from store_support import Raw, vec

# Column types by kind: SQLite's declared type -> PostgreSQL's types of the same kind.
KINDS = {"INTEGER": {"integer", "bigint", "smallint"}, "TEXT": {"text"}, "BLOB": {"bytea"}}


def sqlite_columns(path) -> dict[str, dict[str, str]]:
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'"
                                           " AND name NOT LIKE 'sqlite_%'")]
        return {t: {r[1]: r[2].upper() for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        db.close()


async def postgres_columns(schema: str) -> dict[str, dict[str, str]]:
    conn = await asyncpg.connect(services.PG_DSN)
    try:
        out: dict[str, dict[str, str]] = {}
        for r in await conn.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns"
                                  " WHERE table_schema=$1", schema):
            out.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
        return out
    finally:
        await conn.close()


async def test_both_dialects_reach_the_same_schema(tmp_path):
    services.need("postgres")
    lite = SqliteRepository(tmp_path / "s.sqlite3")
    await lite.open()
    await lite.close()
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    schema = services.unique("mig")
    pg = PostgresRepository(services.PG_DSN, schema=schema)
    try:
        await pg.open()
        await pg.close()
        assert await Raw("postgres", schema).one("SELECT max(version) FROM schema_migrations") == SCHEMA_VERSION
        lite_cols = sqlite_columns(tmp_path / "s.sqlite3")
        pg_cols = await postgres_columns(schema)
        pg_cols.pop("schema_migrations")            # PostgreSQL's version record (SQLite: user_version)
        assert set(lite_cols) == set(pg_cols)
        for table, cols in lite_cols.items():
            assert set(cols) == set(pg_cols[table]), table
            for col, kind in cols.items():
                assert pg_cols[table][col] in KINDS[kind], (table, col, kind, pg_cols[table][col])
    finally:
        await services.drop_schema(schema)


async def _at_version_4_with_a_user(backend):
    """A database as the previous release left it: version 4, one enrolled user (plaintext)."""
    kind, target = backend
    raw = Raw(kind, target)
    if kind == "sqlite":
        db = sqlite3.connect(target, isolation_level=None)
        for m in MIGRATIONS[:4]:
            db.executescript(f"BEGIN;{m.sqlite};PRAGMA user_version={m.version};COMMIT;")
        db.close()
    else:
        conn = await asyncpg.connect(services.PG_DSN)
        try:
            await conn.execute(f'CREATE SCHEMA "{target}"; SET search_path TO "{target}"')
            await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                               " description TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
            for m in MIGRATIONS[:4]:
                await conn.execute(m.postgres)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, 0)", m.version, m.description)
        finally:
            await conn.close()
    await raw.execute("INSERT INTO tenants VALUES ('ten_1', 'acme', 0)")
    await raw.execute("INSERT INTO groups VALUES ('grp_1', 'ten_1', 'default', 0)")
    await raw.execute("INSERT INTO profiles VALUES ('prof_1', 'ten_1', 'grp_1', 'retail', '{}', 0)")
    await raw.execute("INSERT INTO users (profile_id, user_id, status, created_ms, last_update_ms)"
                      " VALUES ('prof_1', 'u1', 'ENROLLED', 0, 0)")
    row = await raw.one("SELECT row_id FROM users")
    await raw.execute("INSERT INTO biokeys VALUES (?, 'DoB', 'hmac:abc', 1)", row)
    await raw.execute("INSERT INTO voiceprints (user_row, vector, speech_ms, model, extractor_version, plda_version,"
                      " dialog_id, created_ms) VALUES (?, ?, 12000, 'campp', 'x1', 'p1', 'd1', 0)", row, vec(4))
    return raw


async def test_an_older_database_is_upgraded_with_its_data(backend, data_keys):
    from store_support import make_store
    raw = await _at_version_4_with_a_user(backend)
    store = make_store(*backend, data_keys)
    await store.open()
    try:
        assert (await store.voiceprints("prof_1", ["u1"]))["u1"].vector == vec(4)
        assert [(u.key_id, u.rows, u.rekeyable) for u in await store.hash_key_usage()] == [(None, 1, 0)]
        assert await store.reencrypt() == 1
        assert (await raw.rows("SELECT key_id FROM voiceprints"))[0][0] == data_keys.active_id
        assert (await store.voiceprints("prof_1", ["u1"]))["u1"].vector == vec(4)
    finally:
        await store.close()
