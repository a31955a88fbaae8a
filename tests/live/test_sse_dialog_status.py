"""GET /dialog-status: the seed's statuses as server-sent events, heartbeats, Last-Event-ID
resume, a clean end when the call closes, and tokens that reach only their own dialog."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import websockets

from gateway.web import sse
from live_support import SseReader, speech

NO_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None)


async def _open(gw, token, last_event_id=None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    return await gw.http.get(f"{gw.url}/dialog-status", params={"token": token}, headers=headers,
                             timeout=NO_READ_TIMEOUT)


async def test_statuses_of_a_call_then_a_clean_end(gateway):
    gw = gateway
    tok = await gw.token("st-1")
    resp = await _open(gw, tok)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    r = SseReader(resp)
    first = await r.until(lambda e: True)
    assert first["data"] == {"status": "CALL_OPENED"} and "event" not in first and int(first["id"]) > 0
    await gw.stream(tok, "st-1", speech("1688_test1"))
    rest = await r.rest()
    statuses = [e["data"] for e in rest if "event" not in e]
    assert statuses == [{"status": "BIO_ACTIVE"}, {"status": "CALL_CLOSED"}], rest
    assert rest[-1] == {"event": "end", "data": {"reason": "CALL_CLOSED"}}
    ids = [int(e["id"]) for e in [first, *rest] if "id" in e]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    resp.close()


async def test_heartbeats_resume_with_last_event_id_and_204_when_nothing_is_left(gateway, monkeypatch):
    gw = gateway
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.2)
    tok = await gw.token("st-2")
    resp = await _open(gw, tok)
    r = SseReader(resp)
    first = await r.until(lambda e: True)
    assert (await r.next(2.0)) == {"comment": "heartbeat"}
    resp.close()                                   # the client drops; the call goes on without it
    await gw.stream(tok, "st-2", speech("1688_test1"))
    resp = await _open(gw, tok, first["id"])       # reconnect: the missed statuses, in order, then the end
    r = SseReader(resp)
    rest = await r.rest()
    assert [e["data"] for e in rest] == [{"status": "BIO_ACTIVE"}, {"status": "CALL_CLOSED"}, {"reason": "CALL_CLOSED"}]
    last_id = [e["id"] for e in rest if "id" in e][-1]
    # The same through the query parameter, which EventSource polyfills use.
    r2 = SseReader(await gw.http.get(f"{gw.url}/dialog-status", params={"token": tok, "lastEventId": first["id"]}))
    assert [e["data"] for e in await r2.rest()][:2] == [{"status": "BIO_ACTIVE"}, {"status": "CALL_CLOSED"}]
    # Nothing after the last id and the call is over: 204 tells EventSource to stop reconnecting.
    resp = await _open(gw, tok, last_id)
    assert resp.status == 204
    # A fresh client after the end gets the final status and the end at once.
    r = SseReader(await _open(gw, tok))
    assert [e["data"] for e in await r.rest()] == [{"status": "CALL_CLOSED"}, {"reason": "CALL_CLOSED"}]


async def test_a_stream_error_ends_with_system_error_and_its_reason(gateway):
    gw = gateway
    tok = await gw.token("st-3")
    r = SseReader(await _open(gw, tok))
    await r.until(lambda e: e["data"] == {"status": "CALL_OPENED"})
    async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}") as ws:
        await ws.send(b"\x00" * 320)              # audio before the RecognitionConfig
        err = json.loads(await ws.recv())
        assert err["error"]["code"] == "AUDIO_BEFORE_CONFIG"
    rest = await r.rest()
    assert rest[0]["data"] == {"status": "SYSTEM_ERROR", "reason": "AUDIO_BEFORE_CONFIG"}
    assert rest[-1]["data"] == {"reason": "SYSTEM_ERROR"}


async def test_authentication_and_isolation(gateway):
    gw = gateway
    for params in ({}, {"token": "not-a-token"}):
        resp = await gw.http.get(f"{gw.url}/dialog-status", params=params)
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    tok_a, tok_b = await gw.token("iso-a"), await gw.token("iso-b")
    ra = SseReader(await _open(gw, tok_a))
    await ra.until(lambda e: True)
    await gw.stream(tok_b, "iso-b", speech("1998_test0"))     # another call's statuses...
    try:
        ev = await ra.next(1.0)
    except asyncio.TimeoutError:
        ev = "silence"
    assert ev == "silence", ev                                # ...never reach this one
