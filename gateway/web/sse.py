"""Server-sent events of the OCP API: GET /dialog-status and GET /verification.

- Payloads are the seed's, sent as default ("message") events so `EventSource.onmessage` sees
  them: `{"status": ...}` on /dialog-status, the JSON array of results on /verification.
- Each event carries `id: <n>`, the message's number within its dialog (1, 2, ...; never a
  count shared across dialogs or tenants). A client reconnecting with `Last-Event-ID` (or
  `?lastEventId=`) gets what it missed from the dialog's recent history; if that history no
  longer reaches back far enough (or the id is not this dialog's) it gets the current state.
- A comment line (`: heartbeat`) is sent every HEARTBEAT_S seconds of silence.
- The stream ends cleanly when the call is over (CALL_CLOSED, or an error status once no audio
  flows), when a verification request naming other users replaces the call's verification
  (from any surface: another /verification, Socket.IO `verification`, the widget; the rule is
  `Dialog.request_verification`'s), when the dialog is retired, or when the session token
  expires (`TOKEN_EXPIRED`: auth.token_idle_s without a request; the open stream does not
  count as use): a last `event: end` carries `{"reason": ...}`, then the response completes.
  A reconnection with `Last-Event-ID` that has nothing more to get is answered 204, which tells
  a browser's EventSource to stop reconnecting.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from aiohttp import web

from gateway.calls.bus import BusMessage, Subscription
from gateway.calls.registry import LiveCall
from gateway.calls.results import Status, VerificationResults
from gateway.services.sessions import Caller
from gateway.services.wiring import Services
from gateway.web import live
from gateway.web.appkeys import SERVICES
from gateway.web.http_auth import caller
from gateway.web.ocp import users_param
from gateway.web.routing import RouteTable

routes = RouteTable()
HEARTBEAT_S = 15.0
RETRY_MS = 3000
Render = Callable[[Any], Any]


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or "0"
    return int(raw) if raw.isdigit() else 0


class _Replay:
    """What a (re)connecting client is owed: the dialog's messages of the wanted kinds after
    `after`, and whether the bounded history may have dropped some of them."""

    def __init__(self, full: list[BusMessage], history_len: int, kinds: set[str], after: int):
        self.latest_seq = full[-1].seq if full else 0
        # Ids are per dialog: one above the newest is from an earlier dialog of that masterId.
        self.truncated = after > 0 and (after > self.latest_seq
                                        or (len(full) >= history_len and full[0].seq > after + 1))
        self.messages = [m for m in full if m.seq > after and m.kind in kinds]

    @classmethod
    async def of(cls, request: web.Request, dialog: LiveCall, kinds: set[str], after: int) -> "_Replay":
        bus = _services(request).bus
        return cls(await bus.history(dialog.key), bus.history_len, kinds, after)


class _EventStream:
    """One SSE response. `epoch`: the verification a /verification stream reads (None on
    /dialog-status); a verification message of a newer epoch ends it (SUPERSEDED), one of an
    older epoch is never sent. The stream ends when its session token expires."""

    def __init__(self, request: web.Request, dialog: LiveCall, render: dict[str, Render], caller: Caller,
                 epoch: int | None = None):
        self.request, self.dialog, self.render, self.epoch = request, dialog, render, epoch
        self.resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                "X-Accel-Buffering": "no"})
        self.last = 0
        self.token = caller.token
        self.expires_at = self._expiry(caller.session.last_used_ms)

    def _expiry(self, last_used_ms: int) -> float:
        return last_used_ms / 1000 + _services(self.request).sessions.idle_s

    async def token_expired(self) -> bool:
        """The stream's token expired (auth.token_idle_s without a request: the open stream
        is no use of it) or its session is gone. The session is re-read, since another
        request may have used the token meanwhile."""
        rec = await _services(self.request).sessions.current(self.token)
        if rec is None:
            return True
        self.expires_at = self._expiry(rec.last_used_ms)
        return time.time() >= self.expires_at

    async def open(self) -> None:
        await self.resp.prepare(self.request)
        await self.resp.write(f"retry: {RETRY_MS}\n\n".encode())

    async def send(self, seq: int, data: Any, event: str | None = None) -> None:
        head = f"id: {seq}\n" if seq else ""
        if event:
            head += f"event: {event}\n"
        await self.resp.write(f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
        self.last = max(self.last, seq)

    async def send_msg(self, msg: BusMessage) -> None:
        await self.send(msg.seq, self.render[msg.kind](msg.payload))

    async def pump(self, sub: Subscription, replay: list[BusMessage]) -> str:
        """Send `replay`, then live messages, until the call is over; return why it ended."""
        for old in replay:
            await self.send_msg(old)
        # Joined after the call was over: send what is already queued (e.g. STARTING and the
        # score of the call's speech), then end.
        over = live.call_over(self.dialog.status, self.dialog)
        while True:
            wait = min(HEARTBEAT_S, max(0.0, self.expires_at - time.time()))
            msg = (sub.queue.get_nowait() if not sub.queue.empty() else None) if over else \
                await sub.get(timeout=wait)
            if msg is None and over:
                return self.dialog.status
            if (msg is None or time.time() >= self.expires_at) and await self.token_expired():
                return "TOKEN_EXPIRED"
            if msg is None:
                if self.dialog.retired:
                    return "DIALOG_RETIRED"
                await self.resp.write(b": heartbeat\n\n")
                continue
            if msg.seq <= self.last:
                continue
            if self.epoch is not None and isinstance(msg.payload, VerificationResults):
                epoch = msg.payload.epoch
                if epoch > self.epoch:
                    return "SUPERSEDED"
                if epoch < self.epoch:
                    continue
            if msg.kind in self.render:
                await self.send_msg(msg)
            if isinstance(msg.payload, Status) and live.call_over(msg.payload.status, self.dialog):
                return msg.payload.status

    async def run(self, sub: Subscription, replay: list[BusMessage]) -> web.StreamResponse:
        try:
            reason = await self.pump(sub, replay)
            await self.send(0, {"reason": reason}, event="end")
            await self.resp.write_eof()
        except ConnectionError:
            pass                    # the client went away
        finally:
            sub.close()
        return self.resp


def _nothing_more(replay: _Replay, dialog: LiveCall, after: int) -> bool:
    return after > 0 and not replay.messages and not replay.truncated and live.call_over(dialog.status, dialog)


@routes.route("GET", "/dialog-status", summary="Call status as server-sent events", auth="session",
              content="text/event-stream", tags=("sse",), query={"token": "Session token"})
async def dialog_status(request: web.Request) -> web.StreamResponse:
    c = await caller(request)
    services = _services(request)
    dialog = await services.sessions.call_of(c, create=True)    # here, or on another instance
    assert dialog is not None
    after = _last_event_id(request)
    replay = await _Replay.of(request, dialog, {Status.kind}, after)
    if _nothing_more(replay, dialog, after):
        return web.Response(status=204)
    sub = services.bus.subscribe(dialog.key)
    stream = _EventStream(request, dialog, {Status.kind: live.status_payload}, c)
    await stream.open()
    messages = replay.messages
    if after == 0 or replay.truncated:
        # A fresh client (or one we cannot replay exactly) starts from the current status.
        await stream.send(replay.latest_seq, live.status_payload(dialog.status_message))
        messages = []
    return await stream.run(sub, messages)


@routes.route("GET", "/verification", summary="Push verification as server-sent events (STARTING, EARLY, "
              "NORMAL); a request naming other users replaces the call's verification and ends this stream",
              auth="session", content="text/event-stream", tags=("sse",),
              query={"users": "User ids (1 to 5): users=a,b or users=a&users=b", "token": "Session token"})
async def verification(request: web.Request) -> web.StreamResponse:
    c = await caller(request)
    users = users_param(request)
    services = _services(request)
    dialog = await services.sessions.call_of(c, create=True)    # here, or on another instance
    assert dialog is not None
    after = _last_event_id(request)
    running = dialog.verification
    if after > 0:
        replay = await _Replay.of(request, dialog, {VerificationResults.kind}, after)
        if running is None or set(users) != set(running.users) or _nothing_more(replay, dialog, after):
            # A reconnection to a verification that a newer request replaced, or that is over.
            return web.Response(status=204)
    sub = services.bus.subscribe(dialog.key)
    try:
        if after == 0:
            running, started = await dialog.request_verification(users)  # a new one publishes STARTING
            messages = [] if started else dialog.verification_snapshot()
        elif replay.truncated:
            messages = dialog.verification_snapshot()[-1:]
        else:
            assert running is not None                 # after > 0 answered 204 without one
            messages = [m for m in replay.messages
                        if isinstance(m.payload, VerificationResults) and m.payload.epoch == running.epoch]
        assert running is not None                     # made above, or after > 0 answered 204 without one
        stream = _EventStream(request, dialog, {VerificationResults.kind: live.sse_verification}, c, running.epoch)
        await stream.open()
    except BaseException:
        sub.close()
        raise
    return await stream.run(sub, messages)
