"""The OCP direct stream: `GET /agent-vb-mw/stream?token=...` (WebSocket). The session token's
call (its own dialog on its masterId) is attached before the upgrade is answered, so a busy call
is a 409, not a socket that closes; then connectors.ocp_stream runs the protocol over the socket
and drives the call through the stream contract (gateway/calls/attach.py)."""
from __future__ import annotations

from aiohttp import web

from connectors import ocp_stream
from gateway.calls.attach import attach
from gateway.calls.dialog import NORMAL_ENDS, DialogBusy
from gateway.errors import ApiError, bad_request
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.http_auth import caller
from gateway.web.routing import RouteTable
from gateway.web.websocket import ReportingWebSocket, open_socket

routes = RouteTable()


def _busy() -> ApiError:
    return ApiError(409, "DIALOG_BUSY", "another stream is already feeding this dialog")


@routes.route("GET", "/agent-vb-mw/stream", summary="Direct audio stream (WebSocket): RecognitionConfig, "
              "audio frames, empty message", auth="session", content="application/octet-stream",
              tags=("stream",), query={"token": "Session token"}, aliases=("/stream",))
async def stream(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    c = await caller(request)
    if services.sessions.dialog_of(c) is None:
        # Several instances: a call another instance holds, with its stream still open, is busy;
        # a closed (or lost) one is taken over here (docs/scale-out.md).
        elsewhere = await services.sessions.call_of(c)
        if elsewhere is not None and elsewhere.active_streams > 0:
            raise _busy()
    dialog = services.sessions.dialog_of(c, create=True)
    assert dialog is not None
    if dialog.busy():
        raise _busy()
    max_frame = request.app[SETTINGS].dialogs.max_frame_bytes
    # compress=False: audio barely deflates, and inflating every frame costs the event loop CPU.
    # max_msg_size: base64 text frames are 4/3 of the audio they carry.
    ws = ReportingWebSocket(report=ocp_stream.read_error_text(max_frame), heartbeat=30.0,
                            max_msg_size=max_frame * 2, compress=False)
    if not ws.can_prepare(request).ok:
        raise bad_request("WEBSOCKET_REQUIRED", "this endpoint needs a WebSocket upgrade")
    await ws.prepare(request)
    async with open_socket(request.app, ws) as wire:
        try:
            port = attach(dialog, connector="ocp", metrics=services.metrics)
        except DialogBusy:                 # another stream won the race while this one upgraded
            await ocp_stream.send_error(wire, ocp_stream.ConnectorError("DIALOG_BUSY", str(_busy().message)))
            return ws
        reason = await ocp_stream.serve(wire, port, max_frame, request.app[SETTINGS].server.first_message_timeout_s)
        if reason not in NORMAL_ENDS:
            services.metrics.inc("vbgw_errors_total", code=reason)
    return ws
