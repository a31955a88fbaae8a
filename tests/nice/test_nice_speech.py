"""NICE CXone calls with real speech, through real clients (websockets for CXone, python-socketio
and SSE for the agent): a caller enrolled from a NICE call verifies TRUE_* on a later NICE call
and an impostor gets FALSE_*, with no agent action (the script parameters' Ani); hold and resume
continue the same dialog with no result lost or repeated; a dropped socket is a hold until the
resume window ends; MIX is scored and flagged `mixed` in results and events."""
from __future__ import annotations

import asyncio
import json

from nice_support import A, B, Agent, events_of, nice_token, speech, unit_for

from connectors.codecs import encode_mulaw
from gateway.web.appkeys import SERVICES
from support import dialog_named

ANI = "+15551688"
BANDS_TRUE = ("TRUE_HIGH", "TRUE_MEDIUM", "TRUE_LOW")


async def enrol_a_by_stream(gw) -> None:
    """Speaker A enrolled as user id = the caller's number (as Omilia's NICE app enrols)."""
    tok = await gw.token("enrol-a", custom={"Ani": ANI})
    await gw.stream(tok, "enrol-a", encode_mulaw(speech(f"{A}_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": ANI})
    assert status == 200, body


def closed(agent: Agent) -> bool:
    return "CALL_CLOSED" in agent.statuses()


async def test_enrolled_on_a_nice_call_verified_on_the_next_and_an_impostor_refused(gateway):
    gw = gateway
    unit = await unit_for(gw)
    core = gw.app[SERVICES]
    params = {"Ani": "+1 (555) 1688", "ContactId": "ignored-here"}

    # Call 1: nobody enrolled yet. The contact (A) on TX, the agent (B) on RX at the same time;
    # the agent enrols the caller from the panel (POST /enrol with the contact's session token).
    c1 = "700000000101"
    tok1 = await nice_token(gw, c1, ani=ANI)
    tx, rx = await asyncio.gather(unit.stream("TX", c1, speech(f"{A}_enrol0"), params, end="stop"),
                                  unit.stream("RX", c1, speech(f"{B}_enrol0"), params, end="close"))
    assert tx.ack["status"] == "ok" and rx.ack["status"] == "ok"
    assert dialog_named(core, c1).verification is None           # no enrolled caller to verify
    status, body = await gw.call("POST", "/enrol", tok1, json={"user_id": ANI})
    assert status == 200, body
    assert [e["enrolled_user"]["user_id"] for e in events_of(gw, c1, "vb_enrolment")] == [ANI]

    # Call 2, the same caller: verified with no agent action; the agent's panel (its token from
    # the script parameters, as /nice/agent hands it over) sees the results live.
    c2 = "700000000102"
    tok2 = await nice_token(gw, c2)
    agent = await Agent(tok2).follow(gw)
    try:
        seen = await unit.stream("TX", c2, speech(f"{A}_test1", f"{A}_test2", f"{A}_test3"),
                                 {**params, "vbgwToken": tok2}, end="stop")
        assert seen.messages == [{"status": "ended", "contactId": c2}]
        await agent.until(closed)
    finally:
        await agent.close()
    rows = agent.results()
    assert rows[0]["limitType"] == "STARTING" and {r["bioUserId"] for r in rows} == {ANI}
    normal = [r for r in rows if r["limitType"] == "NORMAL"]
    assert normal and normal[-1]["bioResult"] in BANDS_TRUE, rows
    assert all("mixed" not in r for r in rows)
    ev = events_of(gw, c2)
    assert ev and ev[-1]["verification_result"] in BANDS_TRUE and ev[-1]["enrolled_user"]["user_id"] == ANI
    assert "mixed" not in ev[-1]
    # each NORMAL result was timed, and the scoring part of it (`vbgw bench nice` reports both)
    h = core.metrics.histograms
    assert h["vbgw_normal_scoring_seconds"].n == h["vbgw_normal_result_delay_seconds"].n >= 1
    assert 0 < h["vbgw_normal_scoring_seconds"].total <= h["vbgw_normal_result_delay_seconds"].total

    # Call 3: another voice from the same number.
    c3 = "700000000103"
    await unit.stream("TX", c3, speech(f"{B}_test0", f"{B}_test1", f"{B}_test2"), params, end="empty")
    ev = events_of(gw, c3)
    assert ev and all(e["verification_result"].startswith("FALSE_") for e in ev), ev


async def test_hold_and_resume_continue_the_same_dialog(gateway):
    gw = gateway
    await enrol_a_by_stream(gw)
    unit = await unit_for(gw)
    core = gw.app[SERVICES]
    contact = "700000000201"
    agent = await Agent(await nice_token(gw, contact)).follow(gw)
    params = {"Ani": ANI}
    try:
        # Before the hold: both perspectives stream, then CXone closes both sockets.
        await asyncio.gather(unit.stream("TX", contact, speech(f"{A}_test1", f"{A}_test2"), params),
                             unit.stream("RX", contact, speech(f"{B}_test0"), params))
        d = dialog_named(core, contact)
        assert d.awaiting_resume and d.active_streams == 0
        await d.drain()
        await asyncio.sleep(1.0)                            # on hold, within nice.resume_idle_s (3 s)
        before = agent.results()
        assert before and "CALL_CLOSED" not in agent.statuses()
        # Resume: new sockets, the same initial messages.
        await asyncio.gather(unit.stream("TX", contact, speech(f"{A}_test3", f"{A}_test4"), params, end="stop"),
                             unit.stream("RX", contact, speech(f"{B}_test1"), params, end="stop"))
        await agent.until(closed)
    finally:
        await agent.close()
    assert dialog_named(core, contact) is d
    statuses = agent.statuses()
    assert statuses.count("CALL_CLOSED") == 1 and statuses[-1] == "CALL_CLOSED" and "SYSTEM_ERROR" not in statuses
    assert statuses.count("CALL_OPENED") == 1, statuses
    rows = agent.results()
    assert [r["limitType"] for r in rows].count("STARTING") == 1           # one verification, not restarted
    scored = [r for r in rows if r["limitType"] != "STARTING"]
    assert len({json.dumps(r, sort_keys=True) for r in scored}) == len(scored), rows   # nothing repeated
    speech_ms = [r["speechMillis"] for r in scored]
    assert speech_ms == sorted(speech_ms) and speech_ms[-1] > max(r["speechMillis"] for r in before)
    assert scored[-1]["bioResult"] in BANDS_TRUE, rows
    assert d.samples_in == len(speech(f"{A}_test1", f"{A}_test2", f"{A}_test3", f"{A}_test4"))


async def test_a_dropped_socket_is_a_hold_until_the_resume_window_ends(gateway):
    gw = gateway
    unit = await unit_for(gw)
    core = gw.app[SERVICES]
    contact = "700000000301"
    agent = await Agent(await nice_token(gw, contact)).follow(gw)
    try:
        await unit.stream("TX", contact, speech(f"{A}_test1"), end="drop")
        for _ in range(50):                                 # the server notices the drop
            d = dialog_named(core, contact)
            if d.awaiting_resume:
                break
            await asyncio.sleep(0.1)
        assert d.awaiting_resume and "CALL_CLOSED" not in agent.statuses()
        # CXone comes back within the window: the same dialog carries on ...
        await unit.stream("TX", contact, speech(f"{A}_test2"), end="close")
        assert dialog_named(core, contact) is d and d.samples_in == len(speech(f"{A}_test1", f"{A}_test2"))
        loop = asyncio.get_running_loop()
        last_close = loop.time()
        # ... and the call closes once nothing came back for nice.resume_idle_s.
        await agent.until(closed, timeout=30)
        assert loop.time() - last_close >= gw.settings.nice.resume_idle_s - 0.5
    finally:
        await agent.close()
    assert agent.statuses().count("CALL_CLOSED") == 1 and "SYSTEM_ERROR" not in agent.statuses()


async def test_mix_is_scored_and_flagged_mixed_in_results_and_events(gateway):
    gw = gateway
    await enrol_a_by_stream(gw)
    unit = await unit_for(gw)
    contact = "700000000401"
    tok = await nice_token(gw, contact)
    agent = await Agent(tok).follow(gw)
    try:
        seen = await unit.stream("MIX", contact, speech(f"{A}_test1", f"{A}_test2", f"{A}_test3"), {"Ani": ANI},
                                 end="stop", shape="audio")
        assert seen.ack["streamPerspective"] == "MIX"
        await agent.until(closed)
    finally:
        await agent.close()
    scored = [r for r in agent.results() if r["limitType"] != "STARTING"]
    assert scored and all(r["mixed"] is True for r in scored), scored
    ev = events_of(gw, contact)
    assert ev and all(e["mixed"] is True for e in ev)
    # The SSE surface says it too (a request for the user under verification joins it).
    status, body = await gw.call("GET", "/verification/ondemand", params={"users": ANI, "token": tok})
    assert status == 200 and body["bio_result"] in BANDS_TRUE
    async with gw.http.get(f"{gw.url}/verification", params={"users": ANI, "token": tok}) as r:
        rows = []
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:") and isinstance(data := json.loads(line[5:]), list):
                rows += data
    assert rows and all(row.get("mixed") is True for row in rows if row["result_type"] != "STARTING"), rows


async def test_a_hang_up_gets_the_final_results_before_the_call_closes(gateway):
    """CXone ends a call by closing its sockets, as a hold does: when nothing came back within
    the resume window, the speech after the last milestone is scored (final) before CALL_CLOSED,
    so no result of the call is lost; and never as a repeat of the last result."""
    gw = gateway
    await enrol_a_by_stream(gw)
    unit = await unit_for(gw)
    core = gw.app[SERVICES]
    contact = "700000000501"
    agent = await Agent(await nice_token(gw, contact)).follow(gw)
    try:
        await unit.stream("TX", contact, speech(f"{A}_test1", f"{A}_test2", f"{A}_test3"), {"Ani": ANI})
        d = dialog_named(core, contact)
        await d.drain()
        said = [r["speechMillis"] for r in agent.results() if r["limitType"] != "STARTING"]
        assert said and max(said) < d.engine_session.speech_ms        # speech after the last milestone
        await agent.until(closed, timeout=30)
    finally:
        await agent.close()
    rows = agent.results()
    last_result = max(i for i, (e, _) in enumerate(agent.events) if e == f"verification-{agent.token}")
    call_closed = next(i for i, (e, data) in enumerate(agent.events)
                       if e == f"status-{agent.token}" and data["status"] == "CALL_CLOSED")
    assert last_result < call_closed
    assert rows[-1]["speechMillis"] == d.engine_session.speech_ms and rows[-1]["bioResult"] in BANDS_TRUE, rows
    scored = [r for r in rows if r["limitType"] != "STARTING"]
    assert len({json.dumps(r, sort_keys=True) for r in scored}) == len(scored), rows
