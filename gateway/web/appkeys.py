"""Typed application keys."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.infra.config import Settings
    from gateway.services.wiring import Services

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
SERVICES: web.AppKey["Services"] = web.AppKey("services")
OPEN_SOCKETS: web.AppKey[set] = web.AppKey("open_sockets", set)
METRICS_TOKEN: web.AppKey[str] = web.AppKey("metrics_token", str)
