"""Two `vbgw serve` instances in shared mode behind haproxy (tests/cluster/cluster_support.py):
a direct stream and an AudioHook stream land on instance A while the agent's Socket.IO client,
SSE readers and REST calls land on B. Enrolment and on-demand verification asked on B reach
the call's audio on A; results published on A reach the agent on B through Redis; the events
are in JetStream, each with its id."""
from __future__ import annotations

import asyncio
import time
import uuid

from cluster_support import TEST, Cluster, enrol_on_a_asked_on_b, events_of, logs_of, on, stream, verify_speech
from live_support import Agent, SseReader, req

async def test_stream_on_a_agent_on_b_through_haproxy(cluster):
    c = cluster
    # -- enrolment from a call streamed into A, asked for on B ------------------------------
    tok = await enrol_on_a_asked_on_b(c)
    status, info = await c.call("b", "GET", "/users/info/cust-1688", tok)
    assert status == 200 and info["status"] == "ENROLLED", info
    assert "cluster_joined" in c.a.log() and "cluster_joined" in c.b.log()

    # -- a live call on A, the agent on B: Socket.IO, SSE, on-demand ------------------------
    tok2 = await c.token("verify-1", route="b")
    audio = verify_speech()
    agent = await Agent().connect(c, headers=on("b"))
    try:
        async with stream(c, "a", tok2, "verify-1") as call:
            await call.send(audio[:8000], speed=4)                     # the call is open on A
            assert await agent.ask("verification", req(tok2, "cust-1688")) == {"ok": True}
            async with c.open_sse("b", "/dialog-status", tok2) as status_resp, \
                    c.open_sse("b", "/verification", tok2, users="cust-1688") as ver_resp:
                assert status_resp.status == 200 and ver_resp.status == 200
                statuses, verification = SseReader(status_resp), SseReader(ver_resp)
                await call.send(audio[8000:], speed=4)
                await call.end()
                status_events = await statuses.rest(timeout=30)
                ver_events = await verification.rest(timeout=30)
        seen = [e["data"].get("status") for e in status_events if "event" not in e]
        assert seen[-1] == "CALL_CLOSED" and "BIO_ACTIVE" in seen, (seen, logs_of(c))
        assert status_events[-1]["event"] == "end" if "event" in status_events[-1] else True
        kinds = [row["result_type"] for e in ver_events if isinstance(e["data"], list) for row in e["data"]]
        assert "EARLY" in kinds and "NORMAL" in kinds, (ver_events, logs_of(c))
        normal = [row for e in ver_events if isinstance(e["data"], list) for row in e["data"]
                  if row["result_type"] == "NORMAL"]
        assert normal[-1]["bio_result"].startswith("TRUE_"), normal
        # Socket.IO on B got the same results, published on A
        await agent.wait(lambda ev: any(r["limitType"] == "NORMAL" for batch in ev[f"verification-{tok2}"]
                                        for r in batch))
        sio_normal = [r for batch in agent.events[f"verification-{tok2}"] for r in batch if r["limitType"] == "NORMAL"]
        assert sio_normal[-1]["bioResult"].startswith("TRUE_"), sio_normal
        assert agent.events[f"clean-speech-{tok2}"], dict(agent.events)
    finally:
        await agent.close()
    # on-demand verification asked on B, answered by A (the call's audio is there)
    status, od = await c.call("b", "GET", "/verification/ondemand", tok2, params={"users": "cust-1688"})
    assert status == 200 and od["bio_result"].startswith("TRUE_") and od["speech_millis"] > 5000, od
    assert "vbgw_cluster_forwarded_total" in await metrics_of(c, "b")

    # the ownership rule across instances: another profile's session on the same masterId
    # reaches a dialog of its own (on B), with none of the call's audio
    other = await c.token("verify-1", route="b", profile="other")
    status, od = await c.call("b", "GET", "/verification/ondemand", other, params={"users": "cust-1688"})
    assert status == 200 and not od["bio_result"].startswith("TRUE_") and od["speech_millis"] == 0, od

    # the internal routes answer instances of this cluster only
    async with c.http.get(f"{c.a.url}/internal/cluster/call", params={"key": "[]"}) as r:
        assert r.status == 401
    async with c.http.get(f"{c.a.url}/internal/cluster/call", params={"key": "[]"},
                          headers={"X-VBGW-Cluster": f"b;{int(time.time())};{'0' * 64}"}) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "CLUSTER_AUTH"

    # -- an AudioHook call on A, the agent on B ---------------------------------------------
    await audiohook_on_a_agent_on_b(c)

    # -- events in JetStream, each with its id ----------------------------------------------
    msgs = events_of(await c.jetstream(min_count=2))
    types = [t for t, _, _ in msgs]
    assert "vb_enrolment" in types and "vb_verification" in types, types
    ids = [i for _, _, i in msgs]
    assert all(ids) and len(set(ids)) == len(ids), ids


async def metrics_of(c: Cluster, route: str) -> str:
    inst = c.a if route == "a" else c.b
    token = (inst.data_dir / "metrics.token").read_text().strip()
    async with c.http.get(f"{inst.url}/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
        return await r.text()


async def audiohook_on_a_agent_on_b(c: Cluster) -> None:
    from audiohook_support import add_org, speech as pcm
    from tools.audiohook_sim import SimOptions, run_session
    import numpy as np
    org_id, api_key, secret, _ = await add_org(c.settings(c.tmp / "admin"))
    conversation = str(uuid.uuid4())
    opts = SimOptions(uri=f"{c.a.ws_url}/audiohook/ws", api_key=api_key, client_secret=secret, org_id=org_id,
                      conversation_id=conversation, custom_config={"userIds": ["cust-1688"]}, speed=1.0)
    external = np.concatenate([pcm(n) for n in TEST])
    session = asyncio.create_task(run_session(opts, external))
    tok = await c.token(conversation, route="b")
    agent = await Agent().connect(c, headers=on("b"))
    try:
        for _ in range(50):                      # until the call is open on A
            await asyncio.sleep(0.2)
            if (await agent.ask("status", req(tok))) == {"ok": True} and agent.events.get(f"status-{tok}"):
                break
        async with c.open_sse("b", "/dialog-status", tok) as resp:
            events = await SseReader(resp).rest(timeout=40)
        report = await session
        assert report.closed and not report.violations, report
        seen = [e["data"].get("status") for e in events if "event" not in e]
        assert seen[-1] == "CALL_CLOSED", (seen, logs_of(c))
        await agent.wait(lambda ev: any(r["limitType"] in ("EARLY", "NORMAL") for batch in ev[f"verification-{tok}"]
                                        for r in batch))
        rows = [r for batch in agent.events[f"verification-{tok}"] for r in batch if r["limitType"] != "STARTING"]
        assert rows[-1]["bioResult"].startswith("TRUE_"), rows
    finally:
        await agent.close()
        if not session.done():
            session.cancel()


async def test_agent_on_b_before_the_audio_lands_on_a(cluster):
    """The agent's desktop connects (and asks for a verification) before the call's audio
    exists anywhere: B makes the dialog. The audio then lands on A, which takes the call; B
    bridges its early dialog to A, so the agent's open connections get the call's results."""
    c = cluster
    await enrol_on_a_asked_on_b(c)
    tok = await c.token("early-1", route="b")
    agent = await Agent().connect(c, headers=on("b"))
    try:
        assert await agent.ask("status", req(tok)) == {"ok": True}
        assert await agent.ask("verification", req(tok, "cust-1688")) == {"ok": True}
        async with c.open_sse("b", "/dialog-status", tok) as resp:
            reader = SseReader(resp)
            async with stream(c, "a", tok, "early-1") as call:
                await call.send(verify_speech(), speed=4)
                await call.end()
            events = await reader.rest(timeout=40)
        seen = [e["data"].get("status") for e in events if "event" not in e]
        assert "BIO_ACTIVE" in seen and seen[-1] == "CALL_CLOSED", (seen, logs_of(c))
        await agent.wait(lambda ev: any(r["limitType"] == "NORMAL" for batch in ev[f"verification-{tok}"]
                                        for r in batch))
        rows = [r for batch in agent.events[f"verification-{tok}"] for r in batch if r["limitType"] == "NORMAL"]
        assert rows[-1]["bioResult"].startswith("TRUE_"), rows
        assert "cluster_call_moved" in c.b.log()
    finally:
        await agent.close()
    # later requests on B reach the call's audio on A
    status, od = await c.call("b", "GET", "/verification/ondemand", tok, params={"users": "cust-1688"})
    assert status == 200 and od["bio_result"].startswith("TRUE_"), od
