"""Socket.IO surface for agent desktops (seed: ocp-vb-socketio-api.txt).

python-socketio's AsyncServer on the gateway's own aiohttp app: path /agent-socket/socket.io,
namespace /agent-socket/socket. A client emits `verification` or `status` with
{"token", "users", "time"}; once the token is valid the client joins its token's rooms and
receives `<event>-<token>` events (see gateway.web.live.SOCKETIO_EVENTS):

    status                 -> status-{token}                       (room "status")
    either                 -> verification-, clean-speech-, TTS-Detection-, blocklist-Detection-,
                              speaker-change-{token}                 (room "any")

`verification` also starts (or joins) the call's push verification; every client following the
call gets its results, whoever asked (one verification per call: Dialog.request_verification).

Events go to rooms named after a hash of the token, never to everyone, so a client receives a
dialog's results only after presenting a valid token for it. A bad payload or an invalid token
gets an `error` event ({"code", "message", "event"}) and the same answer as the ack; the
connection stays up. An Engine.IO connection that has no namespace session with a valid token
`server.socketio_auth_timeout_s` after it was first seen (never connected to the namespace,
or connected and never presented a valid token) is closed.

One bus subscription per dialog with listeners feeds every listener of that dialog: a result is
rendered and encoded once per token, whatever the number of clients."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import socketio
import structlog
from aiohttp import web

from connectors import safejson
from gateway.calls.bus import CallKey, Subscription
from gateway.errors import ApiError
from gateway.infra.logging import library_logger
from gateway.services.auth import token_hash
from gateway.web import live
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.ocp import parse_users

log = structlog.get_logger(__name__)

PATH = "/agent-socket/socket.io"
NAMESPACE = "/agent-socket/socket"
MAX_TOKENS_PER_CLIENT = 8
HUB: web.AppKey["LiveHub"] = web.AppKey("socketio_hub")


class BadPayload(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Request:
    token: str
    users: list[str]


def parse_request(data: Any, need_users: bool) -> Request:
    if not isinstance(data, dict):
        raise BadPayload("BAD_PAYLOAD", 'the payload must be an object {"token", "users", "time"}')
    token = data.get("token")
    if not isinstance(token, str) or not token.strip():
        raise BadPayload("TOKEN_REQUIRED", "token (the session token, a string) is required")
    users_raw = data.get("users", "")
    if not isinstance(users_raw, str):
        raise BadPayload("BAD_USERS", 'users must be a string of comma-separated user ids, e.g. "user1, user2"')
    if "time" in data and not isinstance(data["time"], str):
        raise BadPayload("BAD_TIME", "time must be a string timestamp, e.g. 2024-09-02T12:00:00Z")
    users: list[str] = []
    if need_users or users_raw.strip():
        try:
            users = parse_users(users_raw)
        except ApiError as exc:
            raise BadPayload(exc.code, exc.message) from None
    return Request(token.strip(), users)


class _PacketJson:
    """The json module python-socketio decodes packets with: the standard one, except that a
    packet nested deeper than connectors.safejson allows is refused like malformed JSON."""
    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(text, *args, **kwargs):
        return safejson.loads(text)


def room(audience: str, th: str) -> str:
    return f"{audience}:{th}"


@dataclass
class _Feed:
    """One dialog's bus subscription and the tokens (hash -> token) listening to it."""
    key: CallKey
    sub: Subscription
    tokens: dict[str, str] = field(default_factory=dict)
    task: asyncio.Task | None = None


class LiveHub:
    def __init__(self, app: web.Application):
        self.app = app
        # Explicit loggers: with logger=False python-socketio adds a plain-text stderr handler of its
        # own; the JSON `json` module bounds the nesting of a client's packets (connectors.safejson).
        self.sio = socketio.AsyncServer(async_mode="aiohttp", logger=library_logger("socketio.server"),
                                        engineio_logger=library_logger("engineio.server"), json=_PacketJson)
        self.sio.attach(app, socketio_path=PATH)
        self.feeds: dict[CallKey, _Feed] = {}
        self.watchers: dict[str, set[str]] = {}          # token hash -> sids
        self.clients: dict[str, dict[str, CallKey]] = {}   # sid -> token hash -> dialog key
        self._first_seen: dict[str, float] = {}             # Engine.IO sid -> monotonic time
        self._sweeper: asyncio.Task | None = None
        self.sio.on("connect", self.on_connect, namespace=NAMESPACE)
        self.sio.on("disconnect", self.on_disconnect, namespace=NAMESPACE)
        self.sio.on("verification", self.on_verification, namespace=NAMESPACE)
        self.sio.on("status", self.on_status, namespace=NAMESPACE)

    @property
    def services(self):
        return self.app[SERVICES]

    # -- connections ------------------------------------------------------------------------
    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        self.clients[sid] = {}
        self.services.metrics.inc("vbgw_socketio_connections_total")

    async def _sweep_unauthenticated(self) -> None:
        """Close Engine.IO connections without an authenticated namespace session after the
        grace time: idle unauthenticated sockets must not live for ever (docs/security.md)."""
        grace = self.app[SETTINGS].server.socketio_auth_timeout_s
        while True:
            await asyncio.sleep(max(0.05, min(1.0, grace / 4)))
            try:
                await self.sweep(time.monotonic(), grace)
            except Exception:           # noqa: BLE001 - the sweeper must outlive any one client
                log.exception("socketio_sweep_failed")

    async def sweep(self, now: float, grace: float) -> None:
        eio = self.sio.eio
        authenticated = {self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
                         for sid, watching in self.clients.items() if watching}
        live = set(eio.sockets)
        self._first_seen = {e: t for e, t in self._first_seen.items() if e in live}
        for eio_sid in live - authenticated:
            seen = self._first_seen.setdefault(eio_sid, now)
            sock = eio.sockets.get(eio_sid)
            if now - seen >= grace and sock is not None and not sock.closed:
                self.services.metrics.inc("vbgw_socketio_unauthenticated_closed_total")
                # wait=False: a client that never reads or polls must not hold up the sweep
                await sock.close(wait=False, abort=False, reason=eio.reason.SERVER_DISCONNECT)
                eio.sockets.pop(eio_sid, None)

    async def on_disconnect(self, sid: str, *_reason) -> None:
        for th, key in self.clients.pop(sid, {}).items():
            sids = self.watchers.get(th, set())
            sids.discard(sid)
            if not sids:
                self.watchers.pop(th, None)
                feed = self.feeds.get(key)
                if feed is not None:
                    feed.tokens.pop(th, None)
                    if not feed.tokens:
                        self._drop_feed(feed)

    def clients_count(self) -> int:
        return len(self.clients)

    # -- requests ---------------------------------------------------------------------------
    async def on_verification(self, sid: str, data: Any = None) -> dict:
        return await self._request(sid, data, "verification")

    async def on_status(self, sid: str, data: Any = None) -> dict:
        return await self._request(sid, data, "status")

    async def _error(self, sid: str, event: str, code: str, message: str) -> dict:
        body = {"code": code, "message": message, "event": event}
        self.services.metrics.inc("vbgw_errors_total", code=code)
        await self.sio.emit("error", body, to=sid, namespace=NAMESPACE)
        return {"error": body}

    async def _request(self, sid: str, data: Any, channel: str) -> dict:
        services = self.services
        try:
            req = parse_request(data, need_users=channel == "verification")
            caller = await services.sessions.caller(req.token)
        except BadPayload as exc:
            return await self._error(sid, channel, exc.code, exc.message)
        except ApiError as exc:
            return await self._error(sid, channel, exc.code, exc.message)
        th = token_hash(req.token)
        watching = self.clients.get(sid)
        if watching is None:
            return {"error": {"code": "DISCONNECTED", "message": "not connected", "event": channel}}
        if th not in watching and len(watching) >= MAX_TOKENS_PER_CLIENT:
            return await self._error(sid, channel, "TOO_MANY_TOKENS",
                                     f"one connection follows at most {MAX_TOKENS_PER_CLIENT} sessions")
        try:
            dialog = await services.sessions.call_of(caller, create=True)    # here, or on another instance
        except ApiError as exc:
            return await self._error(sid, channel, exc.code, exc.message)
        assert dialog is not None
        self._watch(sid, th, req.token, dialog.key)
        await self.sio.enter_room(sid, room(channel, th), namespace=NAMESPACE)
        await self.sio.enter_room(sid, room("any", th), namespace=NAMESPACE)
        token = req.token
        if channel == "status":
            await self.sio.emit(f"status-{token}", live.status_payload(dialog.status_message), to=sid,
                                namespace=NAMESPACE)
        # Bring a late joiner up to date with the latest clean speech and fraud signals.
        latest = {m.kind: m for m in await services.bus.history(dialog.key) if m.kind in live.SNAPSHOT_KINDS}
        snapshot = [latest[kind] for kind in live.SNAPSHOT_KINDS if kind in latest]
        if channel == "verification":
            # One verification per call: other users replace it (STARTING and the score so far
            # reach every client of the call); the same users join it.
            try:
                _, started = await dialog.request_verification(req.users)
            except ApiError as exc:             # the call's owner instance does not answer
                return await self._error(sid, channel, exc.code, exc.message)
            if not started:
                snapshot += dialog.verification_snapshot()
        else:
            snapshot += dialog.verification_snapshot()      # e.g. AudioHook's automatic verification
        for msg in snapshot:
            ev = live.SOCKETIO_EVENTS[msg.kind]
            await self.sio.emit(f"{ev.name}-{token}", ev.render(msg.payload), to=sid, namespace=NAMESPACE)
        return {"ok": True}

    def _watch(self, sid: str, th: str, token: str, key: CallKey) -> None:
        old = self.clients[sid].get(th)
        if old is not None and old != key:
            # The token's call is another one now (its dialog was retired, or, with several
            # instances, it moved to the instance its audio reached): the token's rooms follow
            # the new call only, or its clients would get both.
            for other in self.watchers.get(th, ()):
                if th in self.clients.get(other, {}):
                    self.clients[other][th] = key
            feed = self.feeds.get(old)
            if feed is not None:
                feed.tokens.pop(th, None)
                if not feed.tokens:
                    self._drop_feed(feed)
        self.clients[sid][th] = key
        self.watchers.setdefault(th, set()).add(sid)
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = _Feed(key, self.services.bus.subscribe(key, maxsize=1024))
            feed.task = asyncio.create_task(self._pump(feed))
        feed.tokens[th] = token

    def _drop_feed(self, feed: _Feed) -> None:
        self.feeds.pop(feed.key, None)
        feed.sub.close()
        if feed.task is not None:
            feed.task.cancel()

    # -- results out ------------------------------------------------------------------------
    async def _pump(self, feed: _Feed) -> None:
        metrics = self.services.metrics
        while True:
            msg = await feed.sub.get()                   # no timeout: a message, never None
            if msg is None:
                continue
            ev = live.SOCKETIO_EVENTS.get(msg.kind)
            if ev is None:
                continue
            try:
                payload = ev.render(msg.payload)
                for th, token in list(feed.tokens.items()):
                    await self.sio.emit(f"{ev.name}-{token}", payload, to=room(ev.audience, th), namespace=NAMESPACE)
                metrics.observe("vbgw_socketio_delivery_seconds", time.time() - msg.ts)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("socketio_emit_failed", kind=msg.kind)

    async def close(self) -> None:
        for feed in list(self.feeds.values()):
            self._drop_feed(feed)
        if self._sweeper is not None:
            self._sweeper.cancel()
        try:
            await self.sio.shutdown()
        except Exception:   # noqa: BLE001 - shutting down anyway
            pass


def install(app: web.Application) -> LiveHub:
    hub = LiveHub(app)
    app[HUB] = hub

    async def lifecycle(app: web.Application):
        hub._sweeper = asyncio.create_task(hub._sweep_unauthenticated())
        yield
        await hub.close()

    app.cleanup_ctx.append(lifecycle)
    return hub
