"""Serving an app over HTTP: TLS from the settings, and the listening site with the connection
limits of gateway.web.limits attached (`vbgw serve` runs it: gateway/cli/serve.py)."""
from __future__ import annotations

import contextlib
import socket
import ssl

from aiohttp import web

from gateway.infra.config import Settings
from gateway.web import limits


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.server.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.server.tls_cert, settings.server.tls_key)
    return ctx


async def start_site(app: web.Application, settings: Settings, port: int | None = None,
                     sock: socket.socket | None = None) -> tuple[web.AppRunner, web.BaseSite, limits.ConnectionGuard]:
    """Run `app` on `sock` (already bound: `vbgw serve` binds before it starts the app) or on
    server.host and `port` (default server.port), with the connection-level limits of
    gateway.web.limits attached to the listening server."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    s = settings.server
    assert runner.server is not None             # made by setup()
    guard = limits.ConnectionGuard(s.max_connections_per_client, s.send_timeout_s).attach(runner.server)
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(runner, sock, ssl_context=ssl_context(settings))
    else:
        site = web.TCPSite(runner, s.host, s.port if port is None else port, ssl_context=ssl_context(settings))
    try:
        await site.start()
    except BaseException:
        await guard.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    return runner, site, guard
