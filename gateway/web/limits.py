"""Connection-level limits: what keeps idle, slow and never-reading clients from holding the
gateway's sockets and memory (docs/security.md, "Limits and timeouts").

- Idle keep-alive connections, and requests whose headers are trickled in, are closed by
  aiohttp's keep-alive timer (`server.keepalive_timeout_s`): it runs from the moment a
  connection is accepted or a response completes, and fires while no complete request has
  arrived. `handler_args()` sets it with the header size limits.
- A request body must arrive within `server.body_timeout_s` (`body_deadline` middleware):
  a reader waiting for the rest gets `BodyTimeout`, answered 408 REQUEST_TIMEOUT.
- `ConnectionGuard`, on the listening server itself (an idle TCP connection never reaches a
  handler): at most `server.max_connections_per_client` open connections per client address
  (the next one is answered 503 TOO_MANY_CONNECTIONS and closed), and a connection whose
  outgoing data has not moved for `server.send_timeout_s` (a client that stopped reading SSE,
  Socket.IO or a WebSocket) is aborted, which frees what its handler held."""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

if TYPE_CHECKING:
    from gateway.infra.config import ServerConfig

log = structlog.get_logger(__name__)

# aiohttp's parser limits, kept at its defaults and stated here so the docs can name them.
MAX_LINE_BYTES = 8190          # request line and each header line
MAX_FIELD_BYTES = 8190         # one header field
MAX_HEADERS = 128              # header fields per request


def handler_args(server: "ServerConfig") -> dict[str, Any]:
    """Keyword arguments for aiohttp's per-connection RequestHandler (`Application(handler_args=)`,
    so the gateway behaves the same under `vbgw serve` and in tests)."""
    return {"keepalive_timeout": server.keepalive_timeout_s, "max_line_size": MAX_LINE_BYTES,
            "max_field_size": MAX_FIELD_BYTES, "max_headers": MAX_HEADERS,
            # after an early answer (401, 413), unread body is drained for at most this long
            "lingering_time": min(10.0, server.body_timeout_s)}


class BodyTimeout(asyncio.TimeoutError):
    """The request body did not arrive in time (a subclass of TimeoutError so aiohttp's own
    draining of an unread body after the response treats it as the timeout it is)."""


BODY_TIMEOUT_S: web.AppKey[float] = web.AppKey("body_timeout_s", float)


@web.middleware
async def body_deadline(request: web.Request, handler):
    """Fail the reading of a request body that is not complete `body_timeout_s` after the
    request arrived (slowloris bodies), whatever part of the code is reading it."""
    if not request.body_exists or request.content.is_eof():
        return await handler(request)
    timeout = request.app[BODY_TIMEOUT_S]

    def expire() -> None:
        if not request.content.is_eof():
            request.content.set_exception(BodyTimeout(f"the request body did not arrive within {timeout:g} s"))
    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await handler(request)
    finally:
        timer.cancel()


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return ""


def _refusal(limit: int) -> bytes:
    body = json.dumps({"error": {"code": "TOO_MANY_CONNECTIONS", "message":
                       f"at most {limit} open connections per client address"}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Retry-After: 5\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class ConnectionGuard:
    """Per-address connection cap and the stalled-send rule for one aiohttp `web.Server`."""

    def __init__(self, max_per_client: int, send_timeout_s: float, sweep_s: float | None = None):
        self.max_per_client = max_per_client
        self.send_timeout_s = send_timeout_s
        self.sweep_s = sweep_s if sweep_s is not None else max(0.05, min(1.0, send_timeout_s / 4))
        self.per_address: Counter[str] = Counter()
        self.refused = 0
        self.aborted = 0
        self._address: dict[Any, str] = {}
        self._progress: dict[Any, tuple[int, float]] = {}     # handler -> (buffered bytes, since)
        self._server: web.Server | None = None
        self._task: asyncio.Task | None = None

    def attach(self, server: web.Server) -> "ConnectionGuard":
        """Hook the server's connection callbacks (aiohttp calls them on every accepted and lost
        connection) and start the sweeper. Call once, after the runner's setup()."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler, transport) -> None:
            made(handler, transport)
            addr = _address(transport)
            self._address[handler] = addr
            self.per_address[addr] += 1
            if self.max_per_client and addr and self.per_address[addr] > self.max_per_client:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("connection_refused", reason="too_many_connections_per_client",
                                limit=self.max_per_client, refused_total=self.refused)
                transport.write(_refusal(self.max_per_client))
                handler.force_close()

        def connection_lost(handler, exc=None) -> None:
            addr = self._address.pop(handler, None)
            self._progress.pop(handler, None)
            if addr is not None:
                self.per_address[addr] -= 1
                if self.per_address[addr] <= 0:
                    del self.per_address[addr]
            lost(handler, exc)

        server.connection_made = connection_made          # type: ignore[method-assign]
        server.connection_lost = connection_lost          # type: ignore[method-assign]
        self._server = server
        if self.send_timeout_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._sweep())
        return self

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                self.sweep(time.monotonic())
            except Exception:           # noqa: BLE001 - the sweeper must outlive any one connection
                log.exception("connection_sweep_failed")

    def sweep(self, now: float) -> None:
        """Abort connections whose buffered outgoing data has not shrunk for send_timeout_s."""
        assert self._server is not None
        for handler in self._server.connections:
            transport = handler.transport
            if transport is None or transport.is_closing():
                continue
            size = transport.get_write_buffer_size()
            last = self._progress.get(handler)
            if size == 0 or last is None or size < last[0]:
                self._progress[handler] = (size, now)
                continue
            if size > last[0]:
                self._progress[handler] = (size, last[1])     # grew: still no progress since then
            if now - last[1] >= self.send_timeout_s:
                self.aborted += 1
                log.info("client_not_reading", buffered_bytes=size, timeout_s=self.send_timeout_s,
                         aborted_total=self.aborted)
                self._progress.pop(handler, None)
                transport.abort()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
