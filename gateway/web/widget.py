"""The agent widget: static HTML, CSS and JS from gateway/web/widget/ (no build step), and the
small authenticated JSON document it needs (the profile's speech thresholds).

`/agent?token=` checks the session token before serving the page. The assets under
`/agent/assets/` are the same for everyone and carry no tenant data, like /openapi.json, so
they are served without a token (which keeps the token out of more URLs)."""
from __future__ import annotations

from importlib.resources import files

from aiohttp import web
from pydantic import BaseModel

from gateway.web import socketio as sio_api
from gateway.web.http_auth import caller
from gateway.web.routing import RouteTable, json_response
from gateway.errors import ApiError

routes = RouteTable()
WIDGET = files("gateway.web") / "widget"
ASSETS = {"agent.css": "text/css", "agent.js": "text/javascript", "socket.io.min.js": "text/javascript"}
# Same origin only; the widget may be framed by an agent desktop (Genesys, NICE), so no
# frame-ancestors restriction here (restrict it at your reverse proxy if you know the desktop's origin).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff"}


class AgentConfig(BaseModel):
    dialog_id: str
    profile: str
    enrol_min_speech_ms: int
    verify_min_speech_ms: int
    early_speech_ms: int
    socket_path: str
    socket_namespace: str


# What an agent sees instead of the widget when the page's session token is not valid: a
# sentence and what to do, in the widget's own style; never the JSON error body.
GONE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>Voice verification</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/agent/assets/agent.css"></head>
<body><main class="gone"><h1>Voice verification</h1>
<p class="notice" data-level="error" role="alert" data-code="{code}">{message}</p>
<p>Close this panel and open it again from the call: your desktop then starts a new session.
If this keeps happening, tell your administrator (code {code}).</p></main></body></html>
"""
GONE_TEXT = {"TOKEN_EXPIRED": "This panel's session has expired.",
             "PROFILE_GONE": "The voice verification profile of this session no longer exists."}


@routes.route("GET", "/agent", summary="Agent widget (HTML) for one session; 401 with an HTML page saying what "
              "to do for a bad or expired token", auth="session", content="text/html",
              tags=("widget",), query={"token": "Session token"})
async def agent_page(request: web.Request) -> web.Response:
    try:
        await caller(request)
    except ApiError as exc:
        if exc.status != 401:
            raise
        text = GONE_TEXT.get(exc.code, "This panel's session is not valid.")
        return web.Response(text=GONE_PAGE.format(code=exc.code, message=text), status=401, content_type="text/html",
                            charset="utf-8", headers=PAGE_HEADERS)
    return web.Response(body=(WIDGET / "agent.html").read_bytes(), content_type="text/html", charset="utf-8",
                        headers=PAGE_HEADERS)


@routes.route("GET", "/agent/config", summary="What the agent widget needs: the profile's speech thresholds",
              auth="session", response=AgentConfig, tags=("widget",), query={"token": "Session token"})
async def agent_config(request: web.Request) -> web.Response:
    c = await caller(request)
    s = c.profile.settings
    return json_response(AgentConfig(
        dialog_id=c.session.master_id, profile=c.profile.name, enrol_min_speech_ms=s.enrol_min_speech_ms,
        verify_min_speech_ms=s.verify_min_speech_ms, early_speech_ms=s.early_speech_ms,
        socket_path=sio_api.PATH, socket_namespace=sio_api.NAMESPACE))


@routes.route("GET", "/agent/assets/{name}", summary="Agent widget static assets (no tenant data)", auth="none",
              content="application/octet-stream", tags=("widget",))
async def agent_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=(WIDGET / name).read_bytes(), content_type=ASSETS[name], charset="utf-8",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})
