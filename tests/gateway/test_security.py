"""Security properties: secrets never logged, hashed storage, token expiry, TLS."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import subprocess

import aiohttp
import pytest
import structlog
import websockets

from support import protocol_audio, read_mulaw_bytes


async def test_logs_never_carry_tokens_biokeys_or_pats(gateway, capsys):
    import logging
    import sys
    import threading

    from gateway.infra.logging import configure_logging
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    configure_logging("debug", "json")
    try:
        gw = gateway
        tok = await gw.token("log-call", custom={"Ani": "5559876543"})
        await gw.stream(tok, "log-call", read_mulaw_bytes(protocol_audio("ls-other-tel", "1688_enrol0")))
        status, _ = await gw.call("POST", "/enrol", tok, json={
            "user_id": "secretive", "biokeys": [{"key": "Ani", "value": "5559876543"}]})
        assert status == 200
        await gw.call("GET", "/verification/ondemand", params={"users": "secretive", "token": tok})
        await gw.call("POST", "/users/optout", tok, json={"user_id": "secretive"})
        await gw.call("GET", "/users/info/x", "wrong-token")
        out = capsys.readouterr()
        logs = out.out + out.err
        assert "dialog_id" in logs and "log-call" in logs          # logging did happen, bound with dialog_id
        for secret in (tok, gw.pat, "5559876543"):
            assert secret not in logs
        for line in logs.splitlines():
            if line.startswith("{"):
                json.loads(line)                                    # JSON lines
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]


async def test_sensitive_biokeys_are_stored_hashed_and_still_searchable(settings, engine, aiohttp_server):
    from support import Gateway, admin, pat_of
    from gateway.app import create_app
    profile = settings.data_dir.parent / "profile.json"
    profile.write_text(json.dumps({"biokeys": [{"key": "user_id", "is_user_id": True},
                                               {"key": "DoB", "sensitive": True}, {"key": "Ani"}]}))
    await admin(settings, "tenant", "acme")
    await admin(settings, "profile", "--tenant", "acme", "--name", "pci", "--settings", str(profile))
    pat = pat_of(await admin(settings, "pat", "--tenant", "acme"))
    server = await aiohttp_server(create_app(settings, engine=engine))
    async with aiohttp.ClientSession() as http:
        gw = Gateway(f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}", http, settings, pat)
        tok = await gw.token("pci-call", profile="pci", custom={})
        await gw.stream(tok, "pci-call", read_mulaw_bytes(protocol_audio("ls-other-tel", "1998_enrol0")))
        status, body = await gw.call("POST", "/enrol", tok, json={
            "user_id": "u-pci", "biokeys": [{"key": "DoB", "value": "09121990"}, {"key": "Ani", "value": "42"}]})
        assert status == 200, body
        _, found = await gw.call("POST", "/users/search", tok, json={"biokeys": [{"key": "DoB", "value": "09121990"}]})
        assert found["response_status"] == "FOUND_ONE"
        _, found = await gw.call("POST", "/users/search", tok, json={"biokeys": [{"key": "DoB", "value": "01011990"}]})
        assert found["response_status"] == "NOT_FOUND"
    db = sqlite3.connect(settings.sqlite_path)
    rows = dict(db.execute("SELECT key, value FROM biokeys").fetchall())
    assert rows["Ani"] == "42" and rows["DoB"].startswith("hmac:") and "09121990" not in rows["DoB"]
    # PATs and session tokens are stored hashed only.
    assert db.execute("SELECT count(*) FROM pats WHERE token_hash=?", (pat,)).fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM sessions WHERE token_hash=?", (tok,)).fetchone()[0] == 0
    db.close()
    raw = settings.sqlite_path.read_bytes() + (settings.sqlite_path.parent / "vbgw.sqlite3-wal").read_bytes()
    assert b"09121990" not in raw and pat.encode() not in raw and tok.encode() not in raw


async def test_session_tokens_expire_after_idle_time(settings, engine, aiohttp_server):
    from support import Gateway, admin, pat_of
    from gateway.app import create_app
    settings.auth.token_idle_s = 10
    pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    server = await aiohttp_server(create_app(settings, engine=engine))
    async with aiohttp.ClientSession() as http:
        gw = Gateway(f"http://127.0.0.1:{server.port}", "", http, settings, pat)
        tok = await gw.token("idle-call")
        assert (await gw.call("GET", "/users/info/u1", tok))[0] == 200
        db = sqlite3.connect(settings.sqlite_path)     # age the token instead of sleeping
        db.execute("UPDATE sessions SET last_used_ms = last_used_ms - 11000")
        db.commit()
        db.close()
        status, body = await gw.call("GET", "/users/info/u1", tok)
        assert (status, body["error"]["code"]) == (401, "TOKEN_EXPIRED")


async def test_tls_serves_https_and_wss(settings, engine, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    from support import admin, pat_of
    from gateway.app import create_app
    from gateway.web.server import ssl_context
    from gateway.infra.config import load_settings
    s = load_settings(environ={}, overrides={"server": {"data_dir": str(settings.data_dir), "port": 0,
                                                        "tls_cert": str(cert), "tls_key": str(key)},
                                             "events": {"jsonl_path": str(settings.data_dir / "e.jsonl")}})
    pat = pat_of(await admin(s, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    from aiohttp import web
    runner = web.AppRunner(create_app(s, engine=engine))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(s))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"https://127.0.0.1:{port}/api/token/", ssl=client_ctx,
                                 headers={"Authorization": f"Bearer {pat}"},
                                 json={"agentId": "a", "agentSkill": "s", "masterId": "tls-call", "tenantId": "acme",
                                       "vbProfile": "retail", "ccaasProvider": "GENESYS"}) as r:
                tok = (await r.json())["data"]["token"]
        async with websockets.connect(f"wss://127.0.0.1:{port}/agent-vb-mw/stream?token={tok}", ssl=client_ctx) as ws:
            await ws.send(json.dumps({"encoding": "l16", "sample_rate": 8000, "dialog_id": "tls-call"}))
            assert json.loads(await ws.recv())["event"] == "session_started"
            await ws.send(b"\x00\x00" * 1600)
            await ws.send(b"")
            assert json.loads(await ws.recv())["event"] == "session_ended"
        with pytest.raises(Exception):
            async with websockets.connect(f"ws://127.0.0.1:{port}/agent-vb-mw/stream?token={tok}",
                                          open_timeout=3) as ws:
                await asyncio.wait_for(ws.recv(), 3)
    finally:
        await runner.cleanup()
