"""GET /verification: STARTING, EARLY, NORMAL exactly as the seed (JSON arrays), a new request
stops the previous stream, Last-Event-ID resume, a late request gets the score so far, and the
stream ends cleanly when the call closes."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import socketio

from gateway.web.socketio import NAMESPACE, PATH
from live_support import LiveCall, SseReader, call_closed, enrol, speech

NO_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)
SEED_KEYS = ["bio_result", "bio_score", "bio_user_id", "llr", "result_type", "speech_millis"]


async def _open(gw, token, users, last_event_id=None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    return await gw.http.get(f"{gw.url}/verification", params={"users": users, "token": token}, headers=headers,
                             timeout=NO_READ_TIMEOUT)


async def test_starting_early_normal_as_the_seed_then_the_end(gateway):
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("v-1")
    resp = await _open(gw, tok, user)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    r = SseReader(resp)
    starting = await r.until(lambda e: True)
    assert starting["data"] == [{"bio_result": "", "bio_score": 0.0, "bio_user_id": user, "llr": 0.0,
                                 "result_type": "STARTING", "speech_millis": 0}]
    await gw.stream(tok, "v-1", speech("1688_enrol1"))       # the same speaker, another recording
    rest = await r.rest()
    results = [e["data"] for e in rest if "event" not in e]
    assert rest[-1] == {"event": "end", "data": {"reason": "CALL_CLOSED"}}
    kinds = [d[0]["result_type"] for d in results]
    assert kinds[0] == "EARLY" and "NORMAL" in kinds and kinds.index("NORMAL") > 0, kinds
    for d in results:
        assert isinstance(d, list) and len(d) == 1 and sorted(d[0]) == SEED_KEYS
        assert d[0]["bio_user_id"] == user and 0.0 <= d[0]["bio_score"] <= 1.0
    early, normal = results[0][0], results[kinds.index("NORMAL")][0]
    assert 2000 <= early["speech_millis"] < 5000 <= normal["speech_millis"]
    assert normal["bio_result"].startswith("TRUE_"), normal
    assert isinstance(normal["llr"], float)


async def test_a_new_request_stops_the_previous_stream(gateway):
    gw = gateway
    tok = await gw.token("v-2")
    first = SseReader(await _open(gw, tok, "alice"))
    assert (await first.until(lambda e: True))["data"][0]["bio_user_id"] == "alice"
    t0 = time.monotonic()
    second = SseReader(await _open(gw, tok, "bob,carol"))
    assert [x["bio_user_id"] for x in (await second.until(lambda e: True))["data"]] == ["bob", "carol"]
    assert await first.rest(5.0) == [{"event": "end", "data": {"reason": "SUPERSEDED"}}]
    assert time.monotonic() - t0 < 2.0
    # A reconnection of the replaced stream is told to stop (204), not allowed to take over.
    resp = await _open(gw, tok, "alice", last_event_id=1)
    assert resp.status == 204
    second.resp.close()


async def test_a_late_request_gets_the_score_so_far_and_resume_replays(gateway):
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("v-3")
    await gw.stream(tok, "v-3", speech("1688_enrol1"))       # the call is over before anyone asks
    await call_closed(gw, tok)
    r = SseReader(await _open(gw, tok, user))
    events = await r.rest()
    assert [e["data"][0]["result_type"] for e in events[:-1]] == ["STARTING", "NORMAL"]
    assert events[1]["data"][0]["bio_result"].startswith("TRUE_")
    assert events[-1]["data"] == {"reason": "CALL_CLOSED"}
    # Resume after STARTING: the NORMAL result again, then the end; after the last id: 204.
    r = SseReader(await _open(gw, tok, user, last_event_id=events[0]["id"]))
    again = await r.rest()
    assert [e["data"] for e in again] == [events[1]["data"], {"reason": "CALL_CLOSED"}]
    assert (await _open(gw, tok, user, last_event_id=events[1]["id"])).status == 204


async def test_bad_users_and_tokens(gateway):
    gw = gateway
    tok = await gw.token("v-4")
    for params, status, code in [({"users": "a", "token": "nope"}, 401, "UNAUTHORIZED"),
                                 ({"token": tok}, 400, "USERS_REQUIRED"),
                                 ({"users": "a,b,c,d,e,f", "token": tok}, 400, "TOO_MANY_USERS"),
                                 ({"users": "a b", "token": tok}, 400, "BAD_USER_ID")]:
        resp = await gw.http.get(f"{gw.url}/verification", params=params)
        assert resp.status == status and (await resp.json())["error"]["code"] == code


async def test_heartbeats_keep_an_idle_verification_stream_open(gateway, monkeypatch):
    from gateway.web import sse
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.2)
    gw = gateway
    tok = await gw.token("v-5")
    r = SseReader(await _open(gw, tok, "alice"))
    await r.until(lambda e: True)
    beats = [await r.next(2.0) for _ in range(3)]
    assert beats == [{"comment": "heartbeat"}] * 3
    r.resp.close()
    await asyncio.sleep(0.3)


async def test_one_verification_per_call_whichever_surface_asks(gateway):
    """Issue #11: a Socket.IO `verification` for other users took over an open SSE /verification
    stream (TRUE_HIGH for the user it was opened for, then the other user's rows, no end). One
    rule for every surface now: the same users join the call's verification; other users
    replace it, and every reader of the previous one is told (SSE: `end` SUPERSEDED)."""
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("v-6")
    sse = SseReader(await _open(gw, tok, user))
    assert (await sse.until(lambda e: True))["data"][0]["result_type"] == "STARTING"
    agent = socketio.AsyncClient(reconnection=False)
    got: list[list[dict]] = []
    agent.on(f"verification-{tok}", got.append, namespace=NAMESPACE)
    await agent.connect(gw.url, socketio_path=PATH, namespaces=[NAMESPACE], transports=["websocket"])
    try:
        async with LiveCall(gw, tok, "v-6") as call:
            # A desktop following the same call asks for the same user: it joins, nothing restarts.
            ack = await agent.call("verification", {"token": tok, "users": user, "time": ""}, namespace=NAMESPACE)
            assert ack == {"ok": True}
            await call.send(speech("1688_enrol1")[:8000 * 8])             # 8 s: EARLY, then NORMAL
            normal = await sse.until(lambda e: e["data"][0]["result_type"] == "NORMAL")
            assert normal["data"][0]["bio_result"].startswith("TRUE_") and normal["data"][0]["bio_user_id"] == user
            # Other users from Socket.IO: the SSE stream for the previous user ends, with no row of theirs.
            ack = await agent.call("verification", {"token": tok, "users": "otheruser", "time": ""},
                                   namespace=NAMESPACE)
            assert ack == {"ok": True}
            rest = await sse.rest(10.0)
            assert rest[-1] == {"event": "end", "data": {"reason": "SUPERSEDED"}}, rest
            assert all(row["bio_user_id"] == user for e in rest[:-1] for row in e["data"]), rest
            for _ in range(100):
                if got and got[-1][0]["bioUserId"] == "otheruser":
                    break
                await asyncio.sleep(0.05)
            await call.end()
    finally:
        await agent.disconnect()
    # Socket.IO readers are told too: the new verification's STARTING names its users.
    kinds = [(r[0]["limitType"], r[0]["bioUserId"]) for r in got]
    assert kinds[0] == ("STARTING", user) and ("NORMAL", user) in kinds, kinds
    assert ("STARTING", "otheruser") in kinds and kinds.index(("STARTING", "otheruser")) > kinds.index(("NORMAL", user))
    # The replaced stream may not come back: its reconnection is told to stop.
    assert (await _open(gw, tok, user, last_event_id=normal["id"])).status == 204
