"""AudioHook conformance through the simulator against a real gateway on a loopback socket:
each message type and each failure the issue lists."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest
from audiohook_support import org_for, tone

from tools.audiohook_sim import MONO_PCMU, SimOptions, run_session


@pytest.fixture
def settings(settings):
    settings.audiohook.ping_timeout_s = 2.0        # missed-pings test in seconds, not half a minute
    settings.audiohook.signature_failure_delay_s = 0.3
    return settings


async def statuses(gw, conversation_id: str) -> list[dict]:
    """The call statuses published on the dialog, from /dialog-status history."""
    tok = await gw.token(conversation_id)
    out = []
    async with gw.http.get(f"{gw.url}/dialog-status", params={"token": tok, "lastEventId": "1"},
                           timeout=aiohttp.ClientTimeout(total=15)) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
                if out[-1]["status"] == "CALL_CLOSED":
                    break
    return out


async def test_happy_call_stereo_pings_pause_discard_close(gateway):
    org = await org_for(gateway)
    rep = await org.run(tone(4.0), tone(4.0, 220), speed=2.0, ping_interval_s=0.5, initial_ping_delay_s=0.2,
                        pause_at_s=1.0, pause_for_s=0.6, discard_at_s=2.4, discard_s=0.4)
    assert rep.ok, rep.summary()
    assert rep.opened["media"] == [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
                                    "rate": 8000}]
    assert len(rep.rtts) >= 2 and max(rep.rtts) < 0.5
    types = [m["type"] for m in rep.messages]
    assert types[0] == "opened" and types[-1] == "closed" and "pong" in types
    st = [s["status"] for s in await statuses(gateway, rep.conversation_id)]
    assert st[-1] == "CALL_CLOSED"


def status_codes(items: list[dict]) -> list[str]:
    return [s["status"] for s in items]


async def metric(gw, name: str) -> float:
    tok = (gw.settings.data_dir / "metrics.token").read_text().strip()
    async with gw.http.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {tok}"}) as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_connection_probe_opened_then_closed_without_biometric_work(gateway):
    org = await org_for(gateway)
    before = await metric(gateway, "vbgw_dialogs_opened_total")
    rep = await org.run(probe=True)
    assert rep.ok, rep.summary()
    assert [m["type"] for m in rep.messages] == ["opened", "closed"]
    assert rep.opened["media"][0]["channels"] == ["external", "internal"]
    assert rep.frames_sent == 0
    assert await metric(gateway, "vbgw_dialogs_opened_total") == before


async def test_media_negotiation_mono_l16_and_unsupported(gateway):
    org = await org_for(gateway)
    rep = await org.run(offers=[dict(MONO_PCMU)])
    assert rep.ok and rep.opened["media"] == [MONO_PCMU], rep.summary()
    l16 = {"type": "audio", "format": "L16", "channels": ["internal", "external"], "rate": 8000, "x-extra": 1}
    internal_only = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
    rep = await org.run(offers=[internal_only, l16])
    assert rep.ok and rep.opened["media"] == [l16], rep.summary()      # copied exactly, extra key included
    # Offers that are no AudioHook media at all (the protocol has PCMU and L16 at 8000 Hz only).
    bad = [{"type": "audio", "format": "PCMA", "channels": ["external"], "rate": 8000},
           {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 16000}]
    rep = await org.run(offers=bad)
    assert not rep.violations and rep.closed and rep.disconnect["reason"] == "error", rep.summary()
    assert "no supported media" in rep.disconnect["info"]
    assert "ERR_CODE_03" in status_codes(await statuses(gateway, rep.conversation_id))


async def test_update_and_client_error_message(gateway):
    org = await org_for(gateway)
    rep = await org.run(update_language="fr-FR")
    assert rep.ok, rep.summary()
    rep = await org.run(faults=frozenset({"client_error"}))
    assert not rep.violations and rep.closed, rep.summary()
    st = await statuses(gateway, rep.conversation_id)
    assert any(s["status"] == "ERR_CODE_05" and s.get("reason") == "CLIENT_ERROR_500" for s in st), st


async def test_signature_failures_are_401_after_the_delay(gateway):
    org = await org_for(gateway)
    for fault in ("bad_signature", "stale_signature", "no_signature"):
        t0 = time.monotonic()
        rep = await org.run(faults=frozenset({fault}))
        assert rep.http_status == 401, (fault, rep.summary())
        assert time.monotonic() - t0 >= 0.3, fault
    rep = await run_session(SimOptions(uri=org.uri, api_key="not-a-key", client_secret=org.secret,
                                       org_id=org.org_id, speed=0), tone(0.4))
    assert rep.http_status == 401
    # The API key of one org with another org's id in the header.
    rep = await run_session(SimOptions(uri=org.uri, api_key=org.api_key, client_secret=org.secret,
                                       org_id=str(uuid.uuid4()), speed=0), tone(0.4))
    assert rep.http_status == 401
    assert await metric(gateway, "vbgw_audiohook_rejected_total") == 5


async def test_replayed_nonce_is_rejected(gateway):
    org = await org_for(gateway)
    fixed = dict(nonce="bm9uY2Utb2YtYS1jYXB0dXJlZC1yZXF1ZXN0", created=int(time.time()))
    first = await org.run(session_id=str(uuid.uuid4()), **fixed)
    assert first.ok, first.summary()
    again = await org.run(**fixed)
    assert again.http_status == 401


async def test_unsigned_org_and_short_nonce(gateway):
    from audiohook_support import add_org
    org_id, key, _, out = await add_org(gateway.settings, "--no-secret")
    assert out.strip().splitlines()[-1] == "client_secret="
    rep = await run_session(SimOptions(uri=f"{gateway.ws_url}/audiohook/ws", api_key=key, client_secret=None,
                                       org_id=org_id, speed=0), tone(0.6))
    assert rep.ok, rep.summary()
    org = await org_for(gateway)
    assert (await org.run(nonce="too-short")).http_status == 401


async def test_wrong_org_in_open_is_unauthorized(gateway):
    org = await org_for(gateway)
    rep = await org.run(faults=frozenset({"wrong_org"}))
    assert not rep.violations and rep.closed, rep.summary()
    assert rep.disconnect["reason"] == "unauthorized"
    assert "ERR_CODE_01" in status_codes(await statuses(gateway, rep.conversation_id))


@pytest.mark.parametrize("fault, info", [
    ("seq_gap", "expected seq="), ("bad_serverseq", "serverseq="), ("audio_before_open", "Received audio in state"),
    ("odd_frame", "whole number"), ("oversized_frame", "exceeds"),
])
async def test_protocol_violations_disconnect_with_error(gateway, fault, info):
    org = await org_for(gateway)
    rep = await org.run(tone(2.0), faults=frozenset({fault}), ping_interval_s=0.3, initial_ping_delay_s=0.05,
                        speed=4.0)
    assert not rep.violations and rep.closed, rep.summary()
    assert rep.disconnect and rep.disconnect["reason"] == "error" and info in rep.disconnect["info"], rep.summary()
    assert rep.disconnect["info"].startswith("Client Error: ")
    if fault != "audio_before_open":
        assert "ERR_CODE_02" in status_codes(await statuses(gateway, rep.conversation_id))


async def test_malformed_and_oversized_text(gateway):
    import websockets
    from connectors.audiohook_signature import sign
    org = await org_for(gateway)
    sid = str(uuid.uuid4())
    headers = {"Audiohook-Organization-Id": org.org_id, "Audiohook-Session-Id": sid,
               "Audiohook-Correlation-Id": str(uuid.uuid4()), "X-API-KEY": org.api_key}
    for payload in ("{not json", "x" * 70000):
        h = dict(headers)
        h.update(sign(request_target="/audiohook/ws", authority=org.uri.split("/")[2], org_id=org.org_id,
                      session_id=sid, correlation_id=h["Audiohook-Correlation-Id"], api_key=org.api_key,
                      client_secret=org.secret))
        async with websockets.connect(org.uri, additional_headers=h, max_size=None) as ws:
            await ws.send(payload)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert msg["type"] == "disconnect" and msg["parameters"]["reason"] == "error", msg
            assert msg["seq"] == 1 and msg["clientseq"] == 0


async def test_missing_pong_is_reported_by_the_simulator(gateway, monkeypatch):
    from connectors.audiohook import AudioHookSession, Outcome
    monkeypatch.setattr(AudioHookSession, "_on_ping", lambda self, env, p: Outcome())
    org = await org_for(gateway)
    rep = await org.run(tone(3.0), speed=2.0, ping_interval_s=0.4, initial_ping_delay_s=0.05)
    assert any("missing pong" in v for v in rep.violations), rep.summary()
    assert rep.closed                       # the close transaction still completes
    st = await statuses(gateway, rep.conversation_id)
    assert any(s["status"] == "ERR_CODE_05" and s.get("reason") == "CLIENT_ERROR_408" for s in st), st


async def test_missed_pings_disconnect(gateway):
    org = await org_for(gateway)
    rep = await org.run(tone(4.0), speed=1.0, faults=frozenset({"no_pings"}))
    assert not rep.violations and rep.closed, rep.summary()
    assert rep.disconnect["reason"] == "error" and "no ping" in rep.disconnect["info"]
    assert "ERR_CODE_04" in status_codes(await statuses(gateway, rep.conversation_id))


async def test_abrupt_drop_is_cleaned_up_like_close(gateway):
    org = await org_for(gateway)
    rep = await org.run(tone(1.0), faults=frozenset({"drop"}))
    st = await statuses(gateway, rep.conversation_id)
    assert status_codes(st)[-2:] == ["ERR_CODE_06", "CALL_CLOSED"], st
    assert st[-2]["reason"] == "SOCKET_DROPPED", st


async def test_non_websocket_and_bad_headers(gateway):
    status, body = await gateway.call("GET", "/audiohook/ws")
    assert status == 400 and body["error"]["code"] == "WEBSOCKET_REQUIRED"
    import websockets
    with pytest.raises(websockets.InvalidStatus) as exc:
        async with websockets.connect(f"{gateway.ws_url}/audiohook/ws", additional_headers={"X-API-KEY": "k"}):
            pass
    assert exc.value.response.status_code == 400


async def test_agent_side_only_and_empty_offers_are_opened_with_no_customer_audio(gateway):
    """Issue #11 (Genesys' own conformance suite, "Single Stream Single Channel Internal"): an
    offer of the `internal` channel alone is answered `opened` with exactly that offer; the
    call scores nothing and its statuses say NO_CUSTOMER_AUDIO. The other offers the reference
    server accepts are accepted too: no offer at all (`media: []`), `supportedLanguages` asked
    for, a long participant name."""
    from audiohook_support import speech
    org = await org_for(gateway)
    internal_only = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
    conv = str(uuid.uuid4())
    tok = await gateway.token(conv)                   # the agent's session, before the call
    rep = await org.run(tone(1.0), speech("1688_enrol0")[:8000 * 8], conversation_id=conv, offers=[internal_only],
                        custom_config={"userIds": ["cust-1688"]})
    assert rep.ok and rep.opened["media"] == [internal_only], rep.summary()
    assert rep.frames_sent >= 40                      # the agent's 8 s were streamed and taken
    st = await statuses(gateway, conv)
    assert {"status": "CALL_OPENED", "reason": "NO_CUSTOMER_AUDIO"} in st, st
    assert st[-1] == {"status": "CALL_CLOSED", "reason": "NO_CUSTOMER_AUDIO"}, st
    assert "BIO_ACTIVE" not in status_codes(st)
    # Nothing scored: no automatic verification, no event; an agent's request says NO_DATA.
    events = (gateway.settings.data_dir / "events.jsonl")
    assert not events.exists() or conv not in events.read_text()
    status, body = await gateway.call("GET", "/verification/ondemand", params={"users": "cust-1688", "token": tok})
    assert status == 200 and body["bio_result"] in ("NO_DATA", "NOT_SCORED") and body["speech_millis"] == 0, body

    conv = str(uuid.uuid4())
    rep = await org.run(conversation_id=conv, offers=[], supported_languages=True, ani_name="N" * 600)
    assert rep.ok and rep.opened["media"] == [] and rep.opened["supportedLanguages"] == [], rep.summary()
    assert rep.frames_sent == 0
    assert (await statuses(gateway, conv))[-1] == {"status": "CALL_CLOSED", "reason": "NO_CUSTOMER_AUDIO"}
