"""The NICE endpoint with a real WebSocket client against a running gateway: `vbgw nice
add-bu`, credentials refused before the upgrade, a bad first message, TX and RX of one contact in
one dialog, a newer socket of a perspective taking over, the agent panel's entry."""
from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from nice_support import A, B, Unit, add_bu, nice_token, speech, unit_for

from gateway.web.appkeys import SERVICES
from support import dialog_named


async def refused_status(unit: Unit, **kw) -> int:
    with pytest.raises(websockets.InvalidStatus) as exc:
        async with unit.connect(**kw):
            pass
    return exc.value.response.status_code


async def test_add_bu_prints_what_to_paste_and_stores_only_a_hash(gateway):
    gw = gateway
    creds, out = await add_bu(gw.settings)
    assert creds["endpoint"] == "wss://vb.example.com/nice/ws" and creds["header"] == "X-Api-Key"
    assert len(creds["api_key"]) == 64
    assert "Audio Relay Endpoint:  wss://vb.example.com/nice/ws" in out and "{scriptparams}" in out
    store = gw.app[SERVICES].store
    bu = await store.get_nice_bu("4606881")
    assert bu is not None and bu.api_key_hash != creds["api_key"] and creds["api_key"] not in json.dumps(bu.__dict__)
    # A second add-bu needs --rotate; the rotated key replaces the old one at once.
    from gateway.cli.nice import cli_add_bu
    import argparse
    ns = argparse.Namespace(bu_id="4606881", tenant=None, profile=None, rotate=False, public_host=None)
    assert await cli_add_bu(ns, gw.settings) == 2
    rotated, _ = await add_bu(gw.settings, rotate=True, tenant=None, profile=None)
    old, new = Unit(gw, creds["api_key"]), Unit(gw, rotated["api_key"])
    assert await refused_status(old) == 401
    async with new.connect() as ws:
        await ws.send(json.dumps({"streamPerspective": "TX", "contactId": "rot-1"}))
        assert json.loads(await ws.recv())["status"] == "ok"
    # The rotation kept the unit's tenant and profile.
    bu = await store.get_nice_bu("4606881")
    assert bu.profile_id is not None


async def test_credentials_in_any_of_three_places_else_401_before_the_upgrade(gateway):
    gw = gateway
    unit = await unit_for(gw)
    for carrier in ("header", "bearer", "query"):
        async with unit.connect(carrier) as ws:
            await ws.send(json.dumps({"streamPerspective": "RX", "contactId": f"cred-{carrier}"}))
            assert json.loads(await ws.recv()) == {"status": "ok", "streamPerspective": "RX",
                                                   "contactId": f"cred-{carrier}", "encoding": "mulaw",
                                                   "sampleRate": 8000}
    for carrier in ("header", "bearer", "query"):
        assert await refused_status(unit, carrier=carrier, key="0" * 64) == 401
    assert await refused_status(unit, carrier="none") == 401
    # A plain GET is not an upgrade; a revoked unit's key is refused.
    async with gw.http.get(unit.uri.replace("ws://", "http://"), headers={"X-Api-Key": unit.api_key}) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "WEBSOCKET_REQUIRED"
    from gateway.cli.nice import cli_revoke_bu
    import argparse
    assert await cli_revoke_bu(argparse.Namespace(bu_id="4606881"), gw.settings) == 0
    assert await refused_status(unit) == 401
    assert not [d for d in gw.app[SERVICES].dialogs.all() if d.dialog_id == "cred-none"]


async def test_a_bad_first_message_is_refused_and_harms_no_other_call(gateway):
    gw = gateway
    unit = await unit_for(gw)
    good = asyncio.create_task(unit.stream("TX", "good-1", speech(f"{A}_test0"), speed=4, end="stop"))
    cases = [("hello", "BAD_HANDSHAKE", 1007), ('{"contactId": "x"}', "BAD_HANDSHAKE", 1007),
             ('{"streamPerspective": "SIDE", "contactId": "x"}', "BAD_PERSPECTIVE", 1007),
             ('{"streamPerspective": "TX", "contactId": "x", "audio": {"encoding": "opus"}}', "UNSUPPORTED_AUDIO", 1003)]
    for text, code, close_code in cases:
        async with unit.connect() as ws:
            await ws.send(text)
            reply = json.loads(await ws.recv())
            assert reply["status"] == "error" and reply["error"]["code"] == code and reply["error"]["message"]
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == close_code
    async with unit.connect() as ws:                   # audio before the initial message
        await ws.send(b"\xff" * 160)
        assert json.loads(await ws.recv())["error"]["code"] == "AUDIO_BEFORE_HANDSHAKE"
    seen = await good
    assert seen.ack["status"] == "ok" and seen.messages == [{"status": "ended", "contactId": "good-1"}]
    assert seen.close_code == 1000
    d = dialog_named(gw.app[SERVICES], "good-1")
    assert d.samples_in == len(speech(f"{A}_test0"))


async def test_tx_and_rx_of_a_contact_meet_in_one_dialog(gateway):
    gw = gateway
    unit = await unit_for(gw)
    core = gw.app[SERVICES]
    contact = "700000000001"
    tx_audio, rx_audio = speech(f"{A}_test0", f"{A}_test1"), speech(f"{B}_test0")
    tx = asyncio.create_task(unit.stream("TX", contact, tx_audio, speed=4, end="close"))
    rx = asyncio.create_task(unit.stream("RX", contact, rx_audio, speed=4, end="close", shape="media"))
    await asyncio.sleep(0.5)
    d = dialog_named(core, contact)
    assert d.active_streams == 2 and not d.mixed
    # A MIX socket of the same contact would feed the customer channel TX feeds: refused.
    async with unit.connect() as ws:
        await ws.send(json.dumps({"streamPerspective": "MIX", "contactId": contact}))
        reply = json.loads(await ws.recv())
        assert reply["error"]["code"] == "STREAM_BUSY"
    await asyncio.gather(tx, rx)
    assert dialog_named(core, contact) is d
    assert d.samples_in == len(tx_audio)                # the customer's channel: TX's audio alone
    assert d.frames > len(tx_audio) // 1600             # RX's frames fed the same dialog
    assert d.awaiting_resume and d.status != "CALL_CLOSED"
    await asyncio.sleep(gw.settings.nice.resume_idle_s + 1.5)
    assert d.status == "CALL_CLOSED"


async def test_a_newer_socket_of_a_perspective_takes_over(gateway):
    """CXone recovers a dropped connection with a new socket and the same initial message; if
    this side has not seen the old one drop, the newer one wins instead of being refused."""
    gw = gateway
    unit = await unit_for(gw)
    contact = "700000000002"
    async with unit.connect() as old:
        await old.send(json.dumps({"streamPerspective": "TX", "contactId": contact}))
        assert json.loads(await old.recv())["status"] == "ok"
        seen = await unit.stream("TX", contact, speech(f"{A}_test0"), end="stop")
        assert seen.ack["status"] == "ok" and seen.close_code == 1000
        with pytest.raises(websockets.ConnectionClosed):
            await old.recv()
        assert old.close_code == 1000
    d = dialog_named(gw.app[SERVICES], contact)
    assert d.samples_in == len(speech(f"{A}_test0"))


async def test_the_agent_panel_entry_reads_the_token_from_the_script_parameters(gateway):
    gw = gateway
    contact = "700000000003"
    tok = await nice_token(gw, contact)
    params = json.dumps({"vbgwToken": tok, "Ani": "+1 (555) 010-1688", "ContactId": contact})
    async with gw.http.get(f"{gw.url}/nice/agent", params={"params": params}, allow_redirects=False) as r:
        assert r.status == 302
        location = r.headers["Location"]
    assert location.startswith("/agent?") and f"token={tok}" in location and "users=%2B15550101688" in location
    async with gw.http.get(f"{gw.url}{location}") as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]
    status, cfg = await gw.call("GET", "/agent/config", tok)
    assert status == 200 and cfg["dialog_id"] == contact
    async with gw.http.get(f"{gw.url}/nice/agent", params={"params": json.dumps({"Ani": "1"})},
                           allow_redirects=False) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "UNAUTHORIZED"
    async with gw.http.get(f"{gw.url}/nice/agent", params={"params": "Ani=1"}, allow_redirects=False) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "BAD_SCRIPT_PARAMS"
