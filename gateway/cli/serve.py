"""`vbgw serve`: the gateway as a process. The data dir is checked and the socket bound before
the app starts, the app is served (gateway/web/server.py) until SIGTERM/SIGINT, then shut down
gracefully."""
from __future__ import annotations

import asyncio
import signal

import structlog

from gateway.app import create_app
from gateway.infra.config import Settings
from gateway.infra.eventloop import loop_factory
from gateway.web.appkeys import SERVICES
from gateway.web.server import ssl_context, start_site

log = structlog.get_logger(__name__)


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
             data_dir=str(settings.data_dir.resolve()), event_loop=loop_factory(settings.server.event_loop)[1])
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
    factory, _ = loop_factory(settings.server.event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(settings))
