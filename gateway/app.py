"""The aiohttp application factory."""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket

import ssl
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import structlog
from aiohttp import web

from engine import Engine
from gateway.web import limits
from gateway.errors import ApiError
from gateway.events.sinks import build_sink
from gateway.infra.config import Settings
from gateway.infra.files import private_dir
from gateway.infra.metrics import Metrics
from gateway.services.auth import Keyring, load_or_create_secret
from gateway.services.wiring import Services, wire
from gateway.web import aculab, audiohook, blocklists, docs, ocp, recordings, sse, stream, system, widget
from gateway.web import socketio as socketio_api
from gateway.web.appkeys import METRICS_TOKEN, OPEN_SOCKETS, SERVICES, SETTINGS
from gateway.web.errors import client_error, error_response, internal_error
from gateway.web.openapi import build_openapi
from gateway.store.base import StoreUnavailable
from gateway.store.factory import build_repository, keep_opening, load_data_keys, watch_keys
from gateway.store.keys import KeyUnavailable

log = structlog.get_logger(__name__)
ROUTE_TABLES = (ocp.routes, stream.routes, sse.routes, system.routes, audiohook.routes, widget.routes,
                blocklists.routes, aculab.routes, docs.routes, recordings.routes)


def sw_version() -> str:
    try:
        return version("vbgw")
    except PackageNotFoundError:
        return "0.1.0"


PREPARED: web.RequestKey[web.StreamResponse] = web.RequestKey("prepared_response", web.StreamResponse)


async def _remember_prepared(request: web.Request, response: web.StreamResponse) -> None:
    request[PREPARED] = response


@web.middleware
async def error_middleware(request: web.Request, handler):
    """No traceback ever reaches a client: bad input keeps its stable code (gateway.errors.
    client_error), the rest are 500 INTERNAL with a reference to the log line. Once a response
    was prepared (a WebSocket, an SSE stream) no second one can be written: the socket is
    closed instead of an HTTP 500 going into it."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except (StoreUnavailable, KeyUnavailable) as exc:     # the database is down / a data key is missing
        err = ApiError(503, exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        err = client_error(exc, request.app[SETTINGS].server.max_body_bytes)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, f"HTTP_{exc.status}")
        err = ApiError(exc.status, code, exc.reason,
                       headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"} or None)
    except Exception as exc:  # noqa: BLE001 - anything else is a server fault, answered 500
        err = client_error(exc, request.app[SETTINGS].server.max_body_bytes) or internal_error(request, exc)
    request.app[SERVICES].metrics.inc("vbgw_errors_total", code=err.code)
    prepared = request.get(PREPARED)
    if prepared is not None:
        if isinstance(prepared, web.WebSocketResponse) and not prepared.closed:
            await prepared.close(code=1011 if err.status >= 500 else 1008, message=err.code.encode()[:120])
        return prepared
    return error_response(err)


def load_metrics_token(data_dir: Path) -> str:
    path = data_dir / "metrics.token"
    if path.exists():
        return path.read_text().strip()
    private_dir(data_dir)
    tok = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok)
    return tok


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """Build the app. `engine` may be shared (tests load the models once per process)."""
    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[error_middleware, limits.body_deadline],
                          handler_args=limits.handler_args(settings.server))
    app[limits.BODY_TIMEOUT_S] = settings.server.body_timeout_s
    app.on_response_prepare.append(_remember_prepared)
    app[SETTINGS] = settings
    app[OPEN_SOCKETS] = set()
    private_dir(settings.data_dir)            # 0700 (gateway/files.py)
    app[METRICS_TOKEN] = load_metrics_token(settings.data_dir)

    async def lifecycle(app: web.Application):
        eng = Engine.load(settings.engine) if engine is None else engine
        await eng.start()
        keys = load_data_keys(settings)
        store = build_repository(settings, keys)
        sink = build_sink(settings.events)
        await sink.start()
        keyring = Keyring(load_or_create_secret(settings.data_dir, settings.auth.hash_secret.get_secret_value()))
        metrics = Metrics()
        services = wire(settings, store, eng, sink, keyring, metrics)
        metrics.gauge("vbgw_live_dialogs", services.dialogs.live)
        metrics.gauge("vbgw_dialogs", lambda: len(services.dialogs))
        metrics.gauge("vbgw_engine_queue_depth", lambda: eng.stats().queue_depth)
        metrics.gauge("vbgw_engine_overloaded", lambda: int(eng.stats().overloaded))
        metrics.gauge("vbgw_engine_dropped_audio_seconds", lambda: eng.stats().extra.get("dropped_audio_s", 0.0))
        metrics.gauge("vbgw_bus_subscribers", services.bus.subscriber_count)
        background = [asyncio.create_task(watch_keys(keys, settings.encryption.reload_s), name="vbgw-keys")]
        try:
            await store.open()
        except StoreUnavailable as exc:
            if not getattr(store, "retry_open", False):
                raise
            # One line while it stays unreachable (retries log at debug), one when it is reached.
            log.error("database_unreachable", error=str(exc), retrying=True,
                      max_retry_interval_s=settings.storage.reconnect_max_s)
            background.append(asyncio.create_task(
                keep_opening(store, lambda: store_ready(services), settings.storage.reconnect_max_s), name="vbgw-db-open"))
        else:
            await store_ready(services)
        app[SERVICES] = services
        services.dialogs.start()
        log.info("gateway_started", model=eng.info.model, extractor=eng.info.extractor_version)
        yield
        for ws in list(app[OPEN_SOCKETS]):
            await ws.close(code=1001, message=b"server shutting down")
        await services.dialogs.close()
        await services.fraud.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await sink.close()
        await store.close()
        await eng.stop()
        log.info("gateway_stopped")

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(recordings.lifecycle)     # enrolment jobs: after the services are up
    for table in ROUTE_TABLES:
        table.install(app)
    socketio_api.install(app)    # Socket.IO for agent desktops, on the same app and port
    app[system.OPENAPI_DOC] = build_openapi([s for t in ROUTE_TABLES for s in t.specs], sw_version())
    return app


async def store_ready(services: Services) -> None:
    """Start-up checks once the store is open: voiceprints of another model need re-enrolment;
    sensitive biokeys hashed under another auth.hash_secret, and records not sealed under the
    active data key, are reported with the command that fixes them (docs/security.md)."""
    store, eng = services.store, services.engine
    for p in await store.list_profiles():
        n = await store.mark_re_enroll(p.id, eng.info.model, eng.info.extractor_version)
        if n:
            log.warning("users_need_re_enrolment", profile_id=p.id, users=n)
    await services.users.reconcile_files()       # kept audio vs rows after a crash; owner-only modes
    usage = await store.hash_key_usage()
    if any(u.key_id is None for u in usage):
        # Hashes from before key ids were kept: assume today's secret made them (it is the one
        # they were made with unless the secret was changed before this upgrade).
        await store.stamp_legacy_hashes(services.keyring.key_id)
    other = [u for u in usage if u.key_id not in (None, services.keyring.key_id)]
    if other:
        log.warning("biokey_hashes_under_another_secret", hash_key_id=services.keyring.key_id,
                    other_key_ids=[u.key_id for u in other], rows=sum(u.rows for u in other),
                    rekeyable=sum(u.rekeyable for u in other),
                    fix="vbgw admin rekey-biokeys (searches by these biokeys find nobody until then)")
    stale = {t: n for t, per_key in (await store.key_usage()).items()
             for kid, n in per_key.items() if kid != store.keys.active_id and n} if store.keys else {}
    if stale:
        log.warning("records_not_under_active_data_key", active_key_id=store.keys.active_id, rows=stale,
                    fix="vbgw admin rotate-key --reencrypt-only")


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


__all__ = ["create_app", "serve"]
