"""Typed application keys: what the app's cleanup contexts (gateway/app.py) put on the app,
and the request-independent state the surfaces read."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from engine import Engine
    from gateway.events.sinks import EventSink
    from gateway.infra.config import Settings
    from gateway.services.wiring import Services
    from gateway.store.base import Repository

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
ENGINE: web.AppKey["Engine"] = web.AppKey("engine")
STORE: web.AppKey["Repository"] = web.AppKey("store")
SINK: web.AppKey["EventSink"] = web.AppKey("event_sink")
SERVICES: web.AppKey["Services"] = web.AppKey("services")
# The WebSockets open now (closed with 1001 at shutdown, before the calls finish).
OPEN_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("open_sockets")
METRICS_TOKEN: web.AppKey[str] = web.AppKey("metrics_token", str)
