"""Enrolment jobs live in the store, not in memory: a gateway stopped while a job is running
reports it again after the restart (queued again, then done), and a job that died while
committing is not enrolled twice. Opting out while a job waits leaves it no biokeys and no
enrolment."""
from __future__ import annotations

import asyncio
import sqlite3

import aiohttp

from support import Gateway, admin, pat_of
from test_ccaas_jobs import finished, nice_call, submit


async def start(settings, engine, aiohttp_server, http, pat):
    from gateway.app import create_app
    server = await aiohttp_server(create_app(settings, engine=engine))
    return server, Gateway(f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}", http, settings, pat,
                           server.app)


async def wait_for(cond, timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def job_row(settings, job_id: str) -> dict:
    db = sqlite3.connect(settings.sqlite_path)
    db.row_factory = sqlite3.Row
    row = dict(db.execute("SELECT * FROM recording_jobs WHERE id=?", (job_id,)).fetchone())
    db.close()
    return row


async def test_a_restart_loses_no_job_and_enrols_nothing_twice(settings, engine, aiohttp_server, providers):
    _, nice = providers
    pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    async with aiohttp.ClientSession() as http:
        server, gw = await start(settings, engine, aiohttp_server, http, pat)
        nice_call(nice, "777")
        nice.media_mode["777"] = "hang"                     # the download never ends: the job is RUNNING
        status, body = await submit(gw, "NICE", "777", "restart-user")
        assert status == 202, body
        await wait_for(lambda: nice.calls("/media/777"))
        assert (await gw.call("GET", body["status_url"], pat))[1]["status"] == "RUNNING"
        await server.close()                                # the gateway stops mid-download
        assert job_row(settings, body["job_id"])["status"] == "RUNNING"

        del nice.media_mode["777"]
        server, gw = await start(settings, engine, aiohttp_server, http, pat)
        done = await finished(gw, body["status_url"])
        assert done["status"] == "SUCCEEDED" and done["result"]["user_id"] == "restart-user", done
        assert len(nice.calls("/media/777")) == 2
        assert job_row(settings, body["job_id"])["biokeys"] == "[]"
        await server.close()

        # A crash after the enrolment committed but before the job said so: not enrolled again.
        db = sqlite3.connect(settings.sqlite_path)
        created = db.execute("SELECT created_ms FROM recording_jobs WHERE id=?", (body["job_id"],)).fetchone()[0]
        db.execute("UPDATE recording_jobs SET status='RUNNING', stage='COMMITTING', updated_ms=?, finished_ms=NULL"
                   " WHERE id=?", (created, body["job_id"]))
        db.commit()
        db.close()
        server, gw = await start(settings, engine, aiohttp_server, http, pat)
        done = await finished(gw, body["status_url"])
        assert done["status"] == "SUCCEEDED" and len(nice.calls("/media/777")) == 2, done
        vps = sqlite3.connect(settings.sqlite_path).execute(
            "SELECT count(*) FROM voiceprints v JOIN users u ON u.row_id=v.user_row WHERE u.user_id='restart-user'"
        ).fetchone()[0]
        assert vps == 1
        await server.close()


async def test_opting_out_while_a_job_waits_leaves_it_nothing(gateway, providers):
    gw = gateway
    _, nice = providers
    from recording_audio import stereo_call, wav_bytes
    from test_batch_files import enroll
    status, _ = await enroll(gw, (wav_bytes(stereo_call(0), 8000), "x.wav"),
                             **{"biokeys[user_id]": "leaving", "biokeys[Ani]": "+15550999"})
    assert status == 200
    nice_call(nice, "888")
    nice.media_mode["888"] = "hang"
    _, body = await submit(gw, "NICE", "888", "leaving", **{"biokeys[Ani]": "+15550999"})
    await wait_for(lambda: nice.calls("/media/888"))
    assert "+15550999" in job_row(gw.settings, body["job_id"])["biokeys"]
    tok = await gw.token("leaving-call")
    assert (await gw.call("POST", "/users/optout", tok, json={"user_id": "leaving"}))[0] == 200
    assert job_row(gw.settings, body["job_id"])["biokeys"] == "[]"
    nice.release.set()
    done = await finished(gw, body["status_url"])
    assert done["status"] == "FAILED" and done["error"]["code"] == "USER_OPTED_OUT", done
    assert (await gw.call("GET", "/users/info/leaving", tok))[1]["status"] == "OPTED_OUT"


async def test_on_postgresql_a_restart_loses_no_job(engine, aiohttp_server, providers, tmp_path, monkeypatch):
    """The same on a PostgreSQL store (its own schema): the job's state is in PostgreSQL, the
    claim is PostgreSQL's, and a restarted gateway reports and finishes the job."""
    import base64
    import os

    import asyncpg

    import services
    from fake_providers import recordings_overrides
    from gateway.infra.config import load_settings
    services.need("postgres")
    genesys, nice = providers
    schema = services.unique("rec")
    overrides = recordings_overrides(tmp_path, genesys, nice)
    key = base64.b64encode(os.urandom(32)).decode()        # PostgreSQL instances share their data keys
    overrides.update(storage={"dsn": services.PG_DSN, "pg_schema": schema}, encryption={"keys": key})
    settings = load_settings(environ={}, overrides=overrides)
    monkeypatch.setenv("VBGW_STORAGE__DSN", services.PG_DSN)       # `vbgw admin` reads the environment
    monkeypatch.setenv("VBGW_STORAGE__PG_SCHEMA", schema)
    monkeypatch.setenv("VBGW_ENCRYPTION__KEYS", key)

    async def job_status(job_id: str) -> str:
        conn = await asyncpg.connect(services.PG_DSN, server_settings={"search_path": schema})
        try:
            return await conn.fetchval("SELECT status FROM recording_jobs WHERE id=$1", job_id)
        finally:
            await conn.close()
    try:
        pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
        async with aiohttp.ClientSession() as http:
            server, gw = await start(settings, engine, aiohttp_server, http, pat)
            nice_call(nice, "pg-777")
            nice.media_mode["pg-777"] = "hang"
            status, body = await submit(gw, "NICE", "pg-777", "pg-user")
            assert status == 202, body
            await wait_for(lambda: nice.calls("/media/pg-777"))
            await server.close()
            assert await job_status(body["job_id"]) == "RUNNING"
            del nice.media_mode["pg-777"]
            server, gw = await start(settings, engine, aiohttp_server, http, pat)
            done = await finished(gw, body["status_url"])
            assert done["status"] == "SUCCEEDED" and done["result"]["user_id"] == "pg-user", done
            assert done["last_error"] is None and len(nice.calls("/media/pg-777")) == 2
            assert await job_status(body["job_id"]) == "SUCCEEDED"
            await server.close()
    finally:
        await services.drop_schema(schema)
