"""Running the app as the `vbgw serve` process: TLS, the listening site with its connection
limits, and a graceful shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl

import structlog
from aiohttp import web

from gateway.app import create_app
from gateway.infra.config import Settings
from gateway.web import limits
from gateway.web.appkeys import SERVICES

log = structlog.get_logger(__name__)


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


async def _serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully: stop listening, let the open
    streams finish for up to server.shutdown_grace_s, then close what is left. (aiohttp's
    own shutdown stops reading upgraded WebSockets at once, so it cannot do the middle step.)

    The data dir is checked and the socket bound before the app starts (gateway_started),
    and `listening` is logged once it serves: a gateway that cannot start says why
    (StartupError) without having claimed to run."""
    from gateway.infra.startup import bind_socket, check_data_dir
    check_data_dir(settings)
    tls = ssl_context(settings)
    sock = bind_socket(settings.server.host, settings.server.port)
    app = create_app(settings)
    try:
        runner, site, guard = await start_site(app, settings, sock=sock)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    log.info("listening", url=f"{'https' if tls else 'http'}://{settings.server.host or host}:{port}",
             data_dir=str(settings.data_dir.resolve()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutdown_started", open_streams=app[SERVICES].dialogs.live())
        await site.stop()
        await app[SERVICES].dialogs.wait_streams_done(settings.server.shutdown_grace_s)
    finally:
        await guard.close()
        await runner.cleanup()


def serve(settings: Settings) -> None:
    asyncio.run(_serve(settings))
