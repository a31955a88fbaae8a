"""The aiohttp application factory, and the app's resources, each with one cleanup context.

aiohttp starts the cleanup contexts in the order they are listed and stops them in reverse, so
each resource is up before what uses it and outlives it:

  engine  -> the models loaded and the engine's threads running                 (app[ENGINE])
  store   -> the repository built, its data keys watched                        (app[STORE])
  sink    -> the vb_* event sink started                                        (app[SINK])
  services-> the parts wired (gateway/services/wiring.py), the store opened     (app[SERVICES])
             (or retried in the background while the database is unreachable)
  cluster -> several instances only: the results bus's Redis tasks, the link to the other
             instances (gateway/web/cluster.py); stopped after the calls released their entries
  fraud   -> the fraud detectors' worker threads                                (stopped last of the parts)
  calls   -> the call registry's reaper; at shutdown the open sockets are
             closed and the live calls finished first
  recordings -> the workers of enrolment jobs from CCaaS recordings (gateway/web/recordings.py)

Running it as a process is `vbgw serve` (gateway/cli/serve.py: signals, graceful shutdown) over
gateway/web/server.py (TLS, the listening site and its limits); the routes and every HTTP helper
are under gateway/web/.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import structlog
from aiohttp import web

from engine import Engine
from gateway.events.sinks import build_sink
from gateway.infra.config import Settings
from gateway.infra.files import private_dir
from gateway.infra.metrics import Metrics
from gateway.services.auth import Keyring, load_or_create_secret
from gateway.services.wiring import store_ready, wire
from gateway.store.base import StoreUnavailable
from gateway.store.factory import build_repository, keep_opening, load_data_keys, watch_keys
from gateway.web import aculab, audiohook, blocklists, cluster, docs, limits, ocp, recordings, sse, stream, system, widget
from gateway.web import nice as nice_web
from gateway.web import socketio as socketio_api
from gateway.web.appkeys import ENGINE, METRICS_TOKEN, OPEN_SOCKETS, SERVICES, SETTINGS, SINK, STORE
from gateway.web.errors import error_middleware, remember_prepared
from gateway.web.openapi import build_openapi, sw_version

log = structlog.get_logger(__name__)
ROUTE_TABLES = (ocp.routes, stream.routes, sse.routes, system.routes, audiohook.routes, widget.routes,
                blocklists.routes, aculab.routes, docs.routes, recordings.routes, nice_web.routes)
Context = Callable[[web.Application], AsyncIterator[None]]


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """Build the app. `engine` may be shared (tests load the models once per process)."""
    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[error_middleware, limits.body_deadline],
                          handler_args=limits.handler_args(settings.server))
    app[limits.BODY_TIMEOUT_S] = settings.server.body_timeout_s
    app.on_response_prepare.append(remember_prepared)
    app[SETTINGS] = settings
    app[OPEN_SOCKETS] = set()
    private_dir(settings.data_dir)            # 0700 (gateway/infra/files.py)
    app[METRICS_TOKEN] = system.load_metrics_token(settings.data_dir)
    app.cleanup_ctx.extend([engine_context(engine), store_context, sink_context, services_context,
                            cluster.lifecycle,        # several instances: Redis and the link (else nothing)
                            fraud_context, calls_context,
                            recordings.lifecycle])     # enrolment jobs from recordings: once the calls are up
    app.on_startup.append(_started)
    app.on_cleanup.append(_stopped)
    for table in ROUTE_TABLES:
        table.install(app)
    cluster.install(app)         # several instances: the internal routes (docs/scale-out.md)
    socketio_api.install(app)    # Socket.IO for agent desktops, on the same app and port (its own context)
    app[system.OPENAPI_DOC] = build_openapi([s for t in ROUTE_TABLES for s in t.specs], sw_version())
    return app


def engine_context(shared: Engine | None) -> Context:
    """The engine: loaded here unless one is shared (it is stopped either way)."""
    async def engine(app: web.Application) -> AsyncIterator[None]:
        eng = Engine.load(app[SETTINGS].engine) if shared is None else shared
        await eng.start()
        app[ENGINE] = eng
        yield
        await eng.stop()
    return engine


async def store_context(app: web.Application) -> AsyncIterator[None]:
    """The repository (opened by services_context, which has what its start-up checks need) and
    the watch on its data keys (docs/security.md)."""
    settings = app[SETTINGS]
    keys = load_data_keys(settings)
    store = build_repository(settings, keys)
    app[STORE] = store
    watcher = asyncio.create_task(watch_keys(keys, settings.encryption.reload_s), name="vbgw-keys")
    yield
    await _cancel(watcher)
    await store.close()


async def sink_context(app: web.Application) -> AsyncIterator[None]:
    sink = build_sink(app[SETTINGS].events)
    await sink.start()
    app[SINK] = sink
    yield
    await sink.close()


async def services_context(app: web.Application) -> AsyncIterator[None]:
    """The gateway's parts, wired once; then the store is opened and checked (store_ready).
    A database that cannot be reached yet is retried in the background (one log line)."""
    settings, eng, store = app[SETTINGS], app[ENGINE], app[STORE]
    keyring = Keyring(load_or_create_secret(settings.data_dir, settings.auth.hash_secret.get_secret_value()))
    metrics = Metrics()
    services = wire(settings, store, eng, app[SINK], keyring, metrics)
    metrics.gauge("vbgw_live_dialogs", services.dialogs.live)
    metrics.gauge("vbgw_dialogs", lambda: len(services.dialogs))
    metrics.gauge("vbgw_engine_queue_depth", lambda: eng.stats().queue_depth)
    metrics.gauge("vbgw_engine_overloaded", lambda: int(eng.stats().overloaded))
    metrics.gauge("vbgw_engine_dropped_audio_seconds", lambda: eng.stats().extra.get("dropped_audio_s", 0.0))
    # Customer audio through the VAD, and the speech (windows, partials) through the encoder:
    # their ratio is what a call costs the encoder (docs/benchmarks.md).
    metrics.gauge("vbgw_engine_audio_seconds", lambda: eng.stats().audio_seconds)
    metrics.gauge("vbgw_engine_encoder_audio_seconds", lambda: eng.stats().speech_seconds)
    metrics.gauge("vbgw_bus_subscribers", services.bus.subscriber_count)
    opening: asyncio.Task | None = None
    try:
        await store.open()
    except StoreUnavailable as exc:
        if not store.retry_open:
            raise
        # One line while it stays unreachable (retries log at debug), one when it is reached.
        log.error("database_unreachable", error=str(exc), retrying=True,
                  max_retry_interval_s=settings.storage.reconnect_max_s)
        opening = asyncio.create_task(keep_opening(store, lambda: store_ready(services), settings.storage.reconnect_max_s),
                                      name="vbgw-db-open")
    else:
        await store_ready(services)
    app[SERVICES] = services
    yield
    if opening is not None:
        await _cancel(opening)


async def fraud_context(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[SERVICES].fraud.close()


async def calls_context(app: web.Application) -> AsyncIterator[None]:
    """The live calls: the registry's reaper runs; at shutdown every open socket is closed
    (1001) and the calls finish (their final results published) before the parts stop."""
    dialogs = app[SERVICES].dialogs
    dialogs.start()
    yield
    # All at once: each close waits for its peer's close frame and lingers (gateway/web/websocket.py),
    # so closing them one by one would make shutdown as slow as the sum of the slowest peers.
    open_sockets: set[web.WebSocketResponse] = app[OPEN_SOCKETS]
    sockets = list(open_sockets)
    await asyncio.gather(*(ws.close(code=1001, message=b"server shutting down") for ws in sockets),
                         return_exceptions=True)
    await dialogs.close()


async def _started(app: web.Application) -> None:
    eng = app[ENGINE]
    log.info("gateway_started", model=eng.info.model, extractor=eng.info.extractor_version)


async def _stopped(app: web.Application) -> None:
    log.info("gateway_stopped")


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


__all__ = ["create_app"]
