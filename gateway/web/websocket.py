"""A WebSocketResponse that explains, in its protocol's own words, why it is closing when
aiohttp's frame reader refuses a frame.

aiohttp enforces `max_msg_size` (and UTF-8 in text frames, and the framing rules) in its reader
and closes the socket straight from `receive()` (1009, 1007, 1002), before the handler sees
anything, so a client sending a 200 KB frame would get a bare close where one of 70 KB gets
the protocol's documented error message. `report(close_code)` returns that message (or None);
it is sent just before the close frame.

`Wire` is how the connectors see such a socket (connectors.base.WireSocket): they never touch
aiohttp."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable

from aiohttp import web

from connectors.base import WireMessage
from gateway.web.appkeys import OPEN_SOCKETS

READ_ERROR_CLOSE_CODES = {1002: "the WebSocket framing is invalid", 1007: "a text message is not valid UTF-8",
                          1009: "a message exceeds the size limit"}


LINGER_S = 2.0


class ReportingWebSocket(web.WebSocketResponse):
    def __init__(self, *, report: Callable[[int], str | None], **kwargs):
        super().__init__(**kwargs)
        self._report = report
        self._receiving = False
        self._reported = False
        self._lingering = False
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest):
        self._transport = request.transport
        return await super().prepare(request)

    async def receive(self, timeout: float | None = None):
        self._receiving = True
        try:
            return await super().receive(timeout)
        finally:
            self._receiving = False

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        # A close for an error lingers (below): the peer may be in the middle of sending a frame
        # (a client streams audio while the error that ends its call is on its way), and a TCP
        # close with its bytes unread is a reset that can destroy our last message and the close
        # frame before the peer reads them (found by tests/fuzz: a bad first message, then 300 KB).
        # A normal close (1000) answers a peer that said it was done: no lingering, so a client
        # that waits for the server to close TCP first (the websockets library) is not held.
        if not self.closed and code != 1000:
            self._lingering = True
        # Called by receive() itself when the reader failed: the only close that gets a report.
        if self._receiving and code in READ_ERROR_CLOSE_CODES and not self._reported and not self.closed:
            self._reported = True
            text = self._report(code)
            if text is not None:
                try:
                    await self.send_str(text)
                except (ConnectionError, RuntimeError):
                    pass
        closed = await super().close(code=code, message=message, drain=drain)
        if self._lingering:
            await self._linger()
        return closed

    def _close_transport(self) -> None:
        # aiohttp closes the TCP connection at once when its reader failed. The peer may still be
        # sending the rest of the refused frame: closing with unread data sends a reset, which can
        # destroy the report and the close frame before the peer has read them.
        if not self._lingering:
            super()._close_transport()

    async def _linger(self) -> None:
        """A lingering close, as HTTP servers do: stop writing, keep reading (and discarding)
        until the peer closes or LINGER_S passes, then close."""
        t = self._transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while not t.is_closing() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        t.close()


_CLOSE_TYPES = (web.WSMsgType.CLOSE, web.WSMsgType.CLOSING, web.WSMsgType.CLOSED)


class Wire:
    """An aiohttp WebSocket as the connectors' WireSocket (connectors/base.py): text, binary,
    close and error messages; pings and pongs stay below it."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def receive(self, timeout: float | None = None) -> WireMessage:
        while True:
            msg = await self.ws.receive(timeout)
            if msg.type == web.WSMsgType.TEXT:
                return WireMessage("text", msg.data)
            if msg.type == web.WSMsgType.BINARY:
                return WireMessage("binary", msg.data)
            if msg.type in _CLOSE_TYPES:
                return WireMessage("close")
            if msg.type == web.WSMsgType.ERROR:
                return WireMessage("error", str(self.ws.exception()))

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        await self.ws.close(code=code, message=message)


@contextlib.asynccontextmanager
async def open_socket(app: web.Application, ws: web.WebSocketResponse) -> AsyncIterator[Wire]:
    """A prepared WebSocket, counted among the app's open sockets while in use (the shutdown
    closes those with 1001)."""
    app[OPEN_SOCKETS].add(ws)
    try:
        yield Wire(ws)
    finally:
        app[OPEN_SOCKETS].discard(ws)
