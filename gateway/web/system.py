"""Health, readiness, metrics and the OpenAPI document."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from aiohttp import web

from gateway.web.routing import RouteTable
from gateway.web.appkeys import METRICS_TOKEN, SERVICES
from gateway.web.http_auth import bearer
from gateway.errors import unauthorized
from gateway.infra.files import private_dir

routes = RouteTable()


@routes.route("GET", "/healthz", summary="Liveness: the process answers", auth="none", tags=("system",))
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.route("GET", "/readyz", summary="Readiness: models loaded and database reachable", auth="none",
              tags=("system",))
async def readyz(request: web.Request) -> web.Response:
    core = request.app[SERVICES]
    checks = {"models": bool(core.engine.ready), "database": await core.store.ping()}
    ok = all(checks.values())
    return web.json_response({"status": "ready" if ok else "not_ready", "checks": checks}, status=200 if ok else 503)


@routes.route("GET", "/metrics", summary="Prometheus metrics", auth="metrics", content="text/plain",
              tags=("system",))
async def metrics(request: web.Request) -> web.Response:
    expected = request.app[METRICS_TOKEN]
    if not hmac.compare_digest((bearer(request) or "").encode(), expected.encode()):
        raise unauthorized("metrics need Authorization: Bearer <metrics token> (see <data_dir>/metrics.token)")
    core = request.app[SERVICES]
    text = core.metrics.render()
    pending = await core.sink.pending()
    text += f"# TYPE vbgw_events_outbox_pending gauge\nvbgw_events_outbox_pending {pending}\n"
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


@routes.route("GET", "/openapi.json", summary="This API's OpenAPI 3.1 description", auth="none", tags=("system",))
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOC])


OPENAPI_DOC: web.AppKey[dict] = web.AppKey("openapi", dict)


def load_metrics_token(data_dir: Path) -> str:
    """The bearer token of GET /metrics: <data_dir>/metrics.token (0600), made on first start."""
    path = data_dir / "metrics.token"
    if path.exists():
        return path.read_text().strip()
    private_dir(data_dir)
    tok = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok)
    return tok
