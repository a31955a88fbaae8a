"""The gateway on PostgreSQL (storage.dsn), with a cluster of the test's own: started while the
database is down it answers /healthz, keeps /readyz false with one clear log line, answers
store-backed calls with 503 STORE_UNAVAILABLE and retries with backoff; once PostgreSQL is up it
turns ready by itself, and enrolment and verification work end to end with the voiceprint
stored encrypted."""
from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
import asyncpg
import structlog

import services
from support import Gateway, admin, pat_of, protocol_audio, read_mulaw_bytes


async def test_start_while_postgres_is_down_then_ready_end_to_end(throwaway_pg, engine, aiohttp_server, tmp_path,
                                                                  monkeypatch):
    from gateway.app import create_app
    from gateway.infra.config import load_settings
    from gateway.store.keys import key_id
    key = os.urandom(32)
    schema = services.unique("gw")
    settings = load_settings(environ={}, overrides={
        "server": {"data_dir": str(tmp_path / "var"), "port": 0, "shutdown_grace_s": 1},
        "events": {"jsonl_path": str(tmp_path / "var" / "events.jsonl")},
        "storage": {"dsn": throwaway_pg.dsn, "pg_schema": schema, "reconnect_max_s": 0.5, "connect_timeout_s": 2},
        "encryption": {"keys": base64.b64encode(key).decode()},
    })
    # `vbgw admin` (support.admin) reads its configuration from the environment, as in production
    monkeypatch.setenv("VBGW_STORAGE__DSN", throwaway_pg.dsn)
    monkeypatch.setenv("VBGW_STORAGE__PG_SCHEMA", schema)
    monkeypatch.setenv("VBGW_ENCRYPTION__KEYS", base64.b64encode(key).decode())
    await asyncio.to_thread(throwaway_pg.stop)
    try:
        with structlog.testing.capture_logs() as logs:
            server = await aiohttp_server(create_app(settings, engine=engine))
            base = f"http://127.0.0.1:{server.port}"
            async with aiohttp.ClientSession() as http:
                assert (await http.get(f"{base}/healthz")).status == 200
                r = await http.get(f"{base}/readyz")
                body = await r.json()
                assert r.status == 503 and body["checks"] == {"models": True, "database": False}
                r = await http.post(f"{base}/api/token/", headers={"Authorization": "Bearer vbgw_pat_x"}, json={})
                body = await r.json()
                assert r.status == 503 and body["error"]["code"] == "STORE_UNAVAILABLE", body
                for _ in range(200):                   # let it retry a few times
                    if sum(e["event"] == "database_retry" for e in logs) >= 3:
                        break
                    await asyncio.sleep(0.1)
                assert sum(e["event"] == "database_retry" for e in logs) >= 3
                unreachable = [e for e in logs if e["event"] == "database_unreachable"]
                assert len(unreachable) == 1 and unreachable[0]["log_level"] == "error"
                assert "127.0.0.1" in unreachable[0]["error"] and "not reachable" in unreachable[0]["error"]

                await asyncio.to_thread(throwaway_pg.start)
                for _ in range(600):
                    r = await http.get(f"{base}/readyz")
                    if r.status == 200:
                        break
                    await asyncio.sleep(0.1)
                assert r.status == 200, await r.json()
                assert [e["event"] for e in logs].count("database_connected") == 1
                assert [e["event"] for e in logs].count("database_unreachable") == 1

                # end to end on PostgreSQL
                pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
                gw = Gateway(base, f"ws://127.0.0.1:{server.port}", http, settings, pat, server.app)
                tok1 = await gw.token("pg-call-1")
                await gw.stream(tok1, "pg-call-1", read_mulaw_bytes(protocol_audio("ls-other-tel", "1688_enrol0")))
                status, body = await gw.call("POST", "/enrol", tok1, json={"user_id": "cust-1688", "biokeys": []})
                assert status == 200, body
                tok2 = await gw.token("pg-call-2")
                await gw.stream(tok2, "pg-call-2", read_mulaw_bytes(protocol_audio("ls-other-tel", "1688_test1")))
                status, same = await gw.call("GET", "/verification/ondemand",
                                             params={"users": "cust-1688", "token": tok2})
                assert status == 200 and same["bio_result"].startswith("TRUE_"), same
    finally:
        if not await _up(throwaway_pg):      # leave the shared cluster running for the next test
            await asyncio.to_thread(throwaway_pg.start)
    conn = await asyncpg.connect(throwaway_pg.dsn, server_settings={"search_path": schema})
    try:
        [(blob, kid)] = await conn.fetch("SELECT vector, key_id FROM voiceprints")
        assert kid == key_id(key) and len(blob) == 192 * 4 + 12 + 16      # nonce + ciphertext + tag
    finally:
        await conn.close()


async def _up(pg) -> bool:
    try:
        conn = await asyncpg.connect(pg.dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True
