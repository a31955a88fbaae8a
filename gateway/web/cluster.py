"""Instance to instance, with several gateway instances (cluster.mode = "shared",
docs/scale-out.md): the HTTP side of gateway/calls/cluster.py.

* `HttpOwnerLink`: what an instance asks the owner of a call (its state, a verification
  request), at the owner's advertised internal URL.
* `forward_to_owner`: a REST call that needs a call's audio state (POST /enrol, GET
  /verification/ondemand) received by an instance that does not own the call is sent on to the
  owner and its answer returned as it is. The receiving instance has checked the client's own
  session first; the owner checks it again (the session store is shared).
* Every such request carries `X-VBGW-Cluster: <instance>;<unix time>;<HMAC-SHA256>` over the
  instance, time, method, path with query and the body's SHA-256, under cluster.secret. The
  internal routes answer nothing without a valid one, and a forwarded public request is handled
  where it arrives, never forwarded again. A signature is valid for CLOCK_SKEW_S."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any, AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from gateway.calls.bus import BusMessage
from gateway.calls.cluster import ClusterCallRegistry, DirectoryEntry, message_json
from gateway.errors import ApiError, unauthorized
from gateway.services.sessions import Caller
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.routing import read_body

log = structlog.get_logger(__name__)

HEADER = "X-VBGW-Cluster"
CLOCK_SKEW_S = 60
STATE_PATH = "/internal/cluster/call"
VERIFY_PATH = "/internal/cluster/verification"
LINK: web.AppKey["HttpOwnerLink"] = web.AppKey("cluster_link")


def signature(secret: bytes, instance: str, ts: int, method: str, path_qs: str, body: bytes) -> str:
    msg = "\n".join((instance, str(ts), method.upper(), path_qs, hashlib.sha256(body).hexdigest())).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def sign_header(secret: bytes, instance: str, method: str, path_qs: str, body: bytes) -> str:
    ts = int(time.time())
    return f"{instance};{ts};{signature(secret, instance, ts, method, path_qs, body)}"


def _secret(app: web.Application) -> bytes:
    return app[SETTINGS].cluster.secret.get_secret_value().encode()


async def signed_by_peer(request: web.Request) -> bool:
    """Whether the request comes from another instance of this cluster (False: no header);
    a header that does not verify is refused (401 CLUSTER_AUTH)."""
    header = request.headers.get(HEADER)
    if header is None:
        return False
    settings = request.app[SETTINGS]
    parts = header.split(";")
    if settings.cluster.shared and len(parts) == 3 and parts[1].isdigit():
        instance, ts, mac = parts
        body = await read_body(request, settings.server.max_json_bytes)
        want = signature(_secret(request.app), instance, int(ts), request.method, request.raw_path, body)
        if abs(time.time() - int(ts)) <= CLOCK_SKEW_S and hmac.compare_digest(want, mac):
            return True
    raise ApiError(401, "CLUSTER_AUTH", "the cluster signature of this request is not valid")


def _registry(app: web.Application) -> ClusterCallRegistry | None:
    reg = app[SERVICES].dialogs
    return reg if isinstance(reg, ClusterCallRegistry) else None


def _unreachable(entry: DirectoryEntry) -> ApiError:
    return ApiError(503, "OWNER_UNREACHABLE", "the gateway instance that holds this call's audio does not answer; "
                    "retry: its calls are released when its lease expires")


class HttpOwnerLink:
    """gateway.calls.cluster.OwnerLink over HTTP."""

    def __init__(self, app: web.Application):
        self.app = app
        cfg = app[SETTINGS]
        self.instance = cfg.cluster_instance_id
        self.secret = _secret(app)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.cluster.forward_timeout_s))

    async def request(self, entry: DirectoryEntry, method: str, path_qs: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
        h = dict(headers or {})
        h[HEADER] = sign_header(self.secret, self.instance, method, path_qs, body)
        try:
            # encoded=True: the path goes out exactly as signed (the owner checks its raw path)
            async with self.http.request(method, URL(entry.url + path_qs, encoded=True), data=body or None,
                                         headers=h, allow_redirects=False) as r:
                return r.status, await r.read(), r.content_type
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("cluster_owner_unreachable", owner=entry.instance, error=type(exc).__name__)
            raise _unreachable(entry) from None

    async def call_state(self, entry: DirectoryEntry) -> dict[str, Any] | None:
        status, body, _ = await self.request(entry, "GET", f"{STATE_PATH}?key={_q(entry)}")
        if status == 404:
            return None
        if status != 200:
            raise _unreachable(entry)
        return json.loads(body)

    async def request_verification(self, entry: DirectoryEntry, users: list[str]) -> dict[str, Any]:
        body = json.dumps({"key": list(entry.key), "users": users}).encode()
        status, out, _ = await self.request(entry, "POST", VERIFY_PATH, body, {"Content-Type": "application/json"})
        if status == 404:
            raise ApiError(409, "CALL_GONE", "the call ended on the instance that held it; start a new session")
        if status != 200:
            raise _unreachable(entry)
        return json.loads(out)

    async def close(self) -> None:
        await self.http.close()


def _q(entry: DirectoryEntry) -> str:
    from urllib.parse import quote
    return quote(json.dumps(list(entry.key), separators=(",", ":")))


async def forward_to_owner(request: web.Request, c: Caller) -> web.Response | None:
    """The owner's answer to this request when another instance owns the session's call (None:
    handle it here). Called after the client's own session was checked here."""
    reg = _registry(request.app)
    if reg is None or await signed_by_peer(request):
        return None
    owner = await reg.owner_of(c.session.tenant_id, c.session.master_id, c.profile)
    if owner is None:
        return None
    body = await read_body(request, request.app[SETTINGS].server.max_json_bytes)
    headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
    status, out, ctype = await request.app[LINK].request(owner, request.method, request.raw_path, body, headers)
    request.app[SERVICES].metrics.inc("vbgw_cluster_forwarded_total", path=request.path)
    return web.Response(status=status, body=out, content_type=ctype or "application/json")


def _messages(msgs: list[BusMessage]) -> list[dict[str, Any]]:
    return [message_json(m) for m in msgs]


def _local_dialog(request: web.Request, key: list[Any]):
    reg = _registry(request.app)
    d = reg.dialog_by_key(tuple(str(k) for k in key)) if reg is not None and isinstance(key, list) else None
    if d is None:
        raise ApiError(404, "CALL_NOT_HERE", "this instance does not hold that call")
    return d


async def call_state(request: web.Request) -> web.Response:
    if not await signed_by_peer(request):
        raise unauthorized("instances only")
    try:
        key = json.loads(request.query.get("key", ""))
    except ValueError:
        raise ApiError(400, "BAD_KEY", "key must be a JSON list") from None
    d = _local_dialog(request, key)
    v = d.verification
    history = await request.app[SERVICES].bus.history(d.key)
    return web.json_response({
        "status": d.status_message.to_json(), "streams": d.active_streams, "closed_at": d.closed_at,
        "verification": {"epoch": v.epoch, "users": list(v.users)} if v else None,
        "started": message_json(d.verification_started) if d.verification_started else None,
        "latest": message_json(d.verification_latest) if d.verification_latest else None,
        "history": _messages(history)})


async def request_verification(request: web.Request) -> web.Response:
    if not await signed_by_peer(request):
        raise unauthorized("instances only")
    try:
        body = json.loads(await read_body(request, request.app[SETTINGS].server.max_json_bytes))
        key, users = body["key"], [str(u) for u in body["users"]]
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "BAD_REQUEST", "give {key, users}") from None
    d = _local_dialog(request, key)
    v, started = await d.request_verification(users)
    return web.json_response({"epoch": v.epoch, "users": list(v.users), "started": started,
                              "snapshot": [] if started else _messages(d.verification_snapshot())})


def install(app: web.Application) -> None:
    """The internal routes and the link to the other instances (shared mode only): not in the
    OpenAPI document, answered to signed requests of this cluster's instances only."""
    if not app[SETTINGS].cluster.shared:
        return
    app.router.add_get(STATE_PATH, call_state)
    app.router.add_post(VERIFY_PATH, request_verification)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Runs after the call registry exists (gateway/app.py): the bus's Redis tasks and the
    link; stopped after the calls have finished (their directory entries released). Nothing
    in one process."""
    reg = _registry(app)
    if reg is None:
        yield
        return
    link = HttpOwnerLink(app)
    app[LINK] = link
    reg.link = link
    metrics = app[SERVICES].metrics
    metrics.gauge("vbgw_cluster_published_messages", lambda: reg.bus.forwarded)    # to Redis, since start
    metrics.gauge("vbgw_cluster_dropped_messages", lambda: reg.bus.dropped)        # while Redis was away
    metrics.gauge("vbgw_cluster_followed_calls", lambda: len(reg.bus.mirrors))     # owned by other instances
    await reg.bus.start()
    log.info("cluster_joined", instance=app[SETTINGS].cluster_instance_id, url=app[SETTINGS].cluster_url,
             incarnation=reg.bus.incarnation)
    yield
    await reg.bus.close()
    await link.close()
