"""Socket.IO for agent desktops with python-socketio's AsyncClient: every event of the seed
(verification, status, clean-speech, TTS-Detection, blocklist-Detection), rooms per token,
errors that keep the connection up."""
from __future__ import annotations

import asyncio


from gateway.calls.results import BlocklistResults, BlocklistRow, TtsVerdict
from gateway.web.appkeys import SERVICES
from live_support import Agent, call_closed, enrol, req, speech
from support import dialog_named

VERIFICATION_KEYS = ["bioResult", "bioScore", "bioUserId", "errorType", "limitType", "llr", "speechMillis"]


async def test_every_event_reaches_the_agent_with_the_seed_payloads(gateway):
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("sio-1")
    agent = await Agent().connect(gw)
    try:
        assert await agent.ask("status", req(tok, user)) == {"ok": True}
        assert await agent.ask("verification", req(tok, user)) == {"ok": True}
        await agent.wait(lambda ev: ev[f"status-{tok}"] and ev[f"verification-{tok}"])
        assert agent.events[f"status-{tok}"][0] == {"status": "CALL_OPENED"}
        starting = agent.events[f"verification-{tok}"][0]
        assert starting == [{"limitType": "STARTING", "bioUserId": user, "bioResult": "", "bioScore": 0.0, "llr": 0.0,
                             "speechMillis": 0, "errorType": None}]

        await gw.stream(tok, "sio-1", speech("1688_enrol1"))
        await agent.wait(lambda ev: {"status": "CALL_CLOSED"} in ev[f"status-{tok}"])
        statuses = [s["status"] for s in agent.events[f"status-{tok}"]]
        assert statuses == ["CALL_OPENED", "BIO_ACTIVE", "CALL_CLOSED"]

        results = agent.events[f"verification-{tok}"][1:]
        kinds = [r[0]["limitType"] for r in results]
        assert kinds[0] == "EARLY" and "NORMAL" in kinds, kinds
        for r in results:
            assert sorted(r[0]) == VERIFICATION_KEYS and r[0]["bioUserId"] == user and r[0]["errorType"] is None
        normal = results[kinds.index("NORMAL")][0]
        assert normal["bioResult"].startswith("TRUE_") and normal["speechMillis"] >= 5000

        clean = agent.events[f"clean-speech-{tok}"]
        assert clean and all(sorted(c) == ["cleanSpeechDuration", "enoughSpeechDetected"] for c in clean)
        durations = [c["cleanSpeechDuration"] for c in clean]
        assert durations == sorted(durations) and durations[-1] > 10000
        assert all(c["enoughSpeechDetected"] is (c["cleanSpeechDuration"] >= 10000) for c in clean), clean

        # Fraud signals: the fraud-signal detectors publish these bus kinds (docs/live-results.md).
        core = gw.app[SERVICES]
        dialog = dialog_named(core, "sio-1")
        core.bus.publish(dialog.key, TtsVerdict("TTS_Detected", 0.98))
        core.bus.publish(dialog.key, BlocklistResults((BlocklistRow(
            label="MATCH", status="CHECKED", risk_level="HIGH_RISK",
            custom_agent_message="Blocklisted voice has been detected", custom_ui_message="blocklisted"),)))
        await agent.wait(lambda ev: ev[f"TTS-Detection-{tok}"] and ev[f"blocklist-Detection-{tok}"])
        # the call's own live TTS results (real speech: No_TTS_Detected), then the published one
        tts = agent.events[f"TTS-Detection-{tok}"]
        assert tts[-1] == {"label": "TTS_Detected", "detectionScore": 0.98}
        assert all(sorted(t) == ["detectionScore", "label"] and t["label"] == "No_TTS_Detected" for t in tts[:-1]), tts
        assert agent.events[f"blocklist-Detection-{tok}"] == [[{
            "label": "MATCH", "status": "CHECKED", "risk_level": "HIGH_RISK",
            "custom_agent_message": "Blocklisted voice has been detected", "custom_ui_message": "blocklisted"}]]
        assert not agent.events["error"]
    finally:
        await agent.close()


async def test_events_reach_only_clients_with_a_valid_token_for_the_dialog(gateway):
    gw = gateway
    tok_a, tok_b = await gw.token("room-a"), await gw.token("room-b")
    a, b, nosy = await Agent().connect(gw), await Agent().connect(gw), await Agent().connect(gw)
    try:
        assert await a.ask("status", req(tok_a)) == {"ok": True}
        assert await b.ask("status", req(tok_b)) == {"ok": True}
        bad = await nosy.ask("status", req("00000000-0000-4000-8000-000000000000"))
        assert bad["error"]["code"] == "UNAUTHORIZED"
        await gw.stream(tok_a, "room-a", speech("1688_test1"))
        await a.wait(lambda ev: {"status": "CALL_CLOSED"} in ev[f"status-{tok_a}"])
        await asyncio.sleep(0.3)
        assert all(e.endswith(tok_a) for e in a.events)
        assert list(b.events) == [f"status-{tok_b}"] and b.events[f"status-{tok_b}"] == [{"status": "CALL_OPENED"}]
        assert list(nosy.events) == ["error"]
        # No verification ran on the call, so none reached its status-only client (when one runs,
        # every client of the call gets it: test_sse_verification, test_audiohook_speech).
        assert f"verification-{tok_a}" not in a.events
    finally:
        for c in (a, b, nosy):
            await c.close()


async def test_bad_payloads_get_an_error_event_and_the_connection_stays_up(gateway, capsys):
    gw = gateway
    tok = await gw.token("bad-1")
    agent = await Agent().connect(gw)
    try:
        cases = [("verification", "just a string", "BAD_PAYLOAD"),
                 ("verification", {"users": "u1"}, "TOKEN_REQUIRED"),
                 ("verification", {"token": tok}, "USERS_REQUIRED"),
                 ("verification", {"token": tok, "users": ["u1"]}, "BAD_USERS"),
                 ("verification", {"token": tok, "users": "a,b,c,d,e,f"}, "TOO_MANY_USERS"),
                 ("verification", {"token": tok, "users": "u1", "time": 12}, "BAD_TIME"),
                 ("status", {"token": "nope"}, "UNAUTHORIZED"),
                 ("status", None, "BAD_PAYLOAD")]
        for event, payload, code in cases:
            answer = await agent.ask(event, payload)
            assert answer["error"]["code"] == code, (payload, answer)
            assert answer["error"]["event"] == event and tok not in answer["error"]["message"]
        await agent.wait(lambda ev: len(ev["error"]) == len(cases))
        assert [e["code"] for e in agent.events["error"]] == [c for _, _, c in cases]
        assert agent.sio.connected
        assert await agent.ask("status", req(tok)) == {"ok": True}      # still usable
        await agent.wait(lambda ev: ev[f"status-{tok}"])
    finally:
        await agent.close()
    logs = capsys.readouterr()
    assert tok not in logs.out + logs.err                                 # tokens are never logged


async def test_late_joiners_catch_up_and_listeners_are_cleaned_up(gateway):
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("late-1")
    await gw.stream(tok, "late-1", speech("1688_enrol1"))
    await call_closed(gw, tok)
    core = gw.app[SERVICES]
    agent = await Agent().connect(gw)
    try:
        assert await agent.ask("verification", req(tok, user)) == {"ok": True}
        await agent.wait(lambda ev: len(ev[f"verification-{tok}"]) >= 2 and ev[f"clean-speech-{tok}"])
        assert [r[0]["limitType"] for r in agent.events[f"verification-{tok}"]] == ["STARTING", "NORMAL"]
        assert agent.events[f"clean-speech-{tok}"][-1]["enoughSpeechDetected"] is True
        assert core.bus.subscriber_count() == 1          # one feed for the dialog, whatever the clients
    finally:
        await agent.close()
    for _ in range(50):
        if core.bus.subscriber_count() == 0:
            break
        await asyncio.sleep(0.05)
    assert core.bus.subscriber_count() == 0
