"""Server-sent events of the OCP API: GET /dialog-status and GET /verification.

Each event carries `id: <bus sequence>` so a client reconnecting with Last-Event-ID gets
what it missed (from the dialog's recent history). A comment line is sent as a heartbeat.
A new /verification request for the same session stops the previous stream."""
from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway.api.ocp import _caller, _core, _users_param
from gateway.api.routing import RouteTable
from gateway.bus import BusMessage
from gateway.dialogs import CALL_CLOSED

routes = RouteTable()
HEARTBEAT_S = 15.0
_VERIFICATION_STREAMS: web.AppKey[dict] = web.AppKey("verification_streams", dict)


async def _open(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    return resp


async def _send(resp: web.StreamResponse, seq: int, event: str, data) -> None:
    await resp.write(f"id: {seq}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or "0"
    return int(raw) if raw.isdigit() else 0


def verification_items(msg: BusMessage) -> list[dict]:
    return [{"bio_result": r["bio_result"], "bio_score": r["bio_score"], "bio_user_id": r["bio_user_id"],
             "llr": r["llr"], "result_type": msg.data["result_type"], "speech_millis": r["speech_millis"]}
            for r in msg.data["results"]]


async def _pump(request, resp, dialog, kinds: set[str], render, stop: asyncio.Event | None = None) -> None:
    core = _core(request)
    sub = core.bus.subscribe(dialog.key)
    try:
        for msg in core.bus.history(dialog.key, _last_event_id(request)):
            if msg.kind in kinds:
                await _send(resp, msg.seq, msg.kind, render(msg))
        while stop is None or not stop.is_set():
            msg = await sub.get(timeout=HEARTBEAT_S)
            if msg is None:
                await resp.write(b": heartbeat\n\n")
                continue
            if msg.kind in kinds:
                await _send(resp, msg.seq, msg.kind, render(msg))
            if msg.kind == "status" and msg.data["status"] == CALL_CLOSED:
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        sub.close()


@routes.route("GET", "/dialog-status", summary="Call status as server-sent events", auth="session",
              content="text/event-stream", tags=("sse",), query={"token": "Session token"})
async def dialog_status(request: web.Request) -> web.StreamResponse:
    c = await _caller(request)
    dialog = _core(request).dialog_of(c, create=True)
    resp = await _open(request)
    if _last_event_id(request) == 0:
        await _send(resp, 0, "status", {"status": dialog.status, "dialog_id": dialog.dialog_id})
    await _pump(request, resp, dialog, {"status"}, lambda m: {**m.data, "dialog_id": dialog.dialog_id})
    return resp


@routes.route("GET", "/verification", summary="Push verification as server-sent events (STARTING, EARLY, "
              "NORMAL)", auth="session", content="text/event-stream", tags=("sse",),
              query={"users": "Comma-separated user ids (1 to 5)", "token": "Session token"})
async def verification(request: web.Request) -> web.StreamResponse:
    c = await _caller(request)
    users = _users_param(request)
    dialog = _core(request).dialog_of(c, create=True)
    streams = request.app[_VERIFICATION_STREAMS]
    previous = streams.get(c.token)
    if previous is not None:
        previous.set()           # a new request stops the previous stream
    stop = asyncio.Event()
    streams[c.token] = stop
    resp = await _open(request)
    try:
        await dialog.set_targets(users)
        await _pump(request, resp, dialog, {"verification", "status"},
                    lambda m: verification_items(m) if m.kind == "verification" else m.data, stop)
    finally:
        if streams.get(c.token) is stop:
            del streams[c.token]
    return resp
