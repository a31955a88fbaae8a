"""Helpers of the store tests (a uniquely named module: several conftest.py exist)."""
from __future__ import annotations

import sqlite3

import numpy as np

import services
from gateway.store.base import EnrolmentWrite, StoredBiokey


class Raw:
    """Direct SQL on the store's database (what is really at rest), in SQLite's `?` style."""

    def __init__(self, kind: str, target: str):
        self.kind, self.target = kind, target

    async def rows(self, sql: str, *args) -> list[tuple]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.target)
            try:
                return [tuple(r) for r in db.execute(sql, args).fetchall()]
            finally:
                db.close()
        import asyncpg
        parts = sql.split("?")
        sql = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
        conn = await asyncpg.connect(services.PG_DSN, server_settings={"search_path": self.target})
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def execute(self, sql: str, *args) -> None:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.target)
            try:
                db.execute(sql, args)
                db.commit()
            finally:
                db.close()
            return
        await self.rows(sql, *args)

    async def one(self, sql: str, *args):
        rows = await self.rows(sql, *args)
        return rows[0][0] if rows else None


def make_store(kind: str, target: str, keys):
    if kind == "sqlite":
        from gateway.store.sqlite import SqliteRepository
        return SqliteRepository(target, keys)
    from gateway.store.postgres import PostgresRepository
    return PostgresRepository(services.PG_DSN, keys, schema=target, pool_max=20, retry_s=5)


def vec(seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(192).astype(np.float32).tobytes()


def write(profile_id: str, user_id: str, seed: int = 1, **kw) -> EnrolmentWrite:
    base = dict(biokeys=[StoredBiokey("user_id", user_id, False), StoredBiokey("Ani", "555" + user_id, False)],
                vector=vec(seed), speech_ms=12000, model="campp", extractor_version="x1", plda_version="p1",
                dialog_id=f"d-{user_id}-{seed}")
    base.update(kw)
    return EnrolmentWrite(profile_id, user_id, **base)
