"""`vbgw admin rotate-key` while the gateway serves, and `vbgw admin rekey-biokeys` after the
hash secret changed (docs/security.md, "Encryption at rest and key rotation")."""
from __future__ import annotations

import json
import sqlite3

import structlog
from pydantic import SecretStr

from gateway.store.keys import DataKeys
from support import admin, pat_of, protocol_audio, read_mulaw_bytes

P = "ls-other-tel"


def keys_file_ids(settings) -> list[str]:
    path = DataKeys.file_path(settings.data_dir, settings.encryption.keys_file)
    return DataKeys.load(settings.data_dir, path, "", create=False).ids


def sealed_key_ids(settings) -> set[str]:
    db = sqlite3.connect(settings.sqlite_path)
    try:
        return {r[0] for t in ("voiceprints", "fingerprints") for r in db.execute(f"SELECT key_id FROM {t}")}
    finally:
        db.close()


async def test_rotate_key_online_while_the_gateway_serves(gateway, monkeypatch):
    gw = gateway
    # `vbgw admin rotate-key` waits 2 x reload_s; this gateway (reload_s 5) picks the new key up
    # when it first reads a record sealed under it, before its own periodic re-read
    monkeypatch.setenv("VBGW_ENCRYPTION__RELOAD_S", "0.2")
    tok = await gw.token("rot-1")
    await gw.stream(tok, "rot-1", read_mulaw_bytes(protocol_audio(P, "1688_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": "cust-1688", "biokeys": []})
    assert status == 200, body
    [first] = keys_file_ids(gw.settings)
    assert sealed_key_ids(gw.settings) == {first}

    out = await admin(gw.settings, "rotate-key")
    new, old = keys_file_ids(gw.settings)
    assert old == first and f"new active data key {new}" in out and "re-encrypted" in out
    assert sealed_key_ids(gw.settings) == {new}               # every record re-sealed, none lost

    # the running gateway reads the re-sealed voiceprint, and seals new writes with the new key
    tok2 = await gw.token("rot-2")
    await gw.stream(tok2, "rot-2", read_mulaw_bytes(protocol_audio(P, "1688_test1")))
    status, same = await gw.call("GET", "/verification/ondemand", params={"users": "cust-1688", "token": tok2})
    assert status == 200 and same["bio_result"].startswith("TRUE_"), same
    tok3 = await gw.token("rot-3")
    await gw.stream(tok3, "rot-3", read_mulaw_bytes(protocol_audio(P, "1998_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok3, json={"user_id": "cust-1998", "biokeys": []})
    assert status == 200, body
    assert sealed_key_ids(gw.settings) == {new}

    out = await admin(gw.settings, "rotate-key", "--reencrypt-only", "--retire")
    assert f"retired keys: {old}" in out and keys_file_ids(gw.settings) == [new]
    status, again = await gw.call("GET", "/verification/ondemand", params={"users": "cust-1688", "token": tok2})
    assert status == 200 and again["bio_result"].startswith("TRUE_"), again


async def test_a_changed_hash_secret_is_detected_and_rekeyed(settings, engine, aiohttp_server, monkeypatch, tmp_path):
    import aiohttp

    from gateway.app import create_app
    from support import Gateway
    profile = tmp_path / "pci.json"
    profile.write_text(json.dumps({"biokeys": [{"key": "user_id", "is_user_id": True},
                                               {"key": "DoB", "sensitive": True}]}))
    monkeypatch.setenv("VBGW_AUTH__HASH_SECRET", "first secret")
    settings.auth.hash_secret = SecretStr("first secret")
    pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    await admin(settings, "profile", "--tenant", "acme", "--name", "pci", "--settings", str(profile))
    pat = pat_of(await admin(settings, "pat", "--tenant", "acme"))

    async def search(server, http) -> str:
        gw = Gateway(f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}", http, settings, pat)
        tok = await gw.token("pci-call", profile="pci", custom={})
        if not (await gw.call("GET", "/users/info/u-pci", tok))[1]["status"] == "ENROLLED":
            await gw.stream(tok, "pci-call", read_mulaw_bytes(protocol_audio(P, "1998_enrol0")))
            status, body = await gw.call("POST", "/enrol", tok, json={
                "user_id": "u-pci", "biokeys": [{"key": "DoB", "value": "09121990"}]})
            assert status == 200, body
        _, found = await gw.call("POST", "/users/search", tok, json={"biokeys": [{"key": "DoB", "value": "09121990"}]})
        return found["response_status"]

    async with aiohttp.ClientSession() as http:
        server = await aiohttp_server(create_app(settings, engine=engine))
        assert await search(server, http) == "FOUND_ONE"
        await server.close()

        # the operator changes auth.hash_secret: detected at start-up, searches miss until re-keyed
        settings.auth.hash_secret = SecretStr("second secret")
        monkeypatch.setenv("VBGW_AUTH__HASH_SECRET", "second secret")
        with structlog.testing.capture_logs() as logs:
            server = await aiohttp_server(create_app(settings, engine=engine))
        [warning] = [e for e in logs if e["event"] == "biokey_hashes_under_another_secret"]
        assert warning["rows"] == 1 and warning["rekeyable"] == 1 and "rekey-biokeys" in warning["fix"]
        assert await search(server, http) == "NOT_FOUND"
        out = await admin(settings, "rekey-biokeys")
        assert "1 sensitive biokeys re-keyed" in out
        assert await search(server, http) == "FOUND_ONE"
        await server.close()
