"""The connector contract. A connector knows one wire protocol: it parses and validates
messages, answers protocol messages itself, and turns audio into normalised `Frame`s that it
hands to a `StreamPort`, the one stream contract every audio source drives its call through
(the gateway's side is gateway/calls/attach.py). It reads and writes its socket through
`WireSocket`, so it never sees an aiohttp object; it never imports the engine or a surface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Channel = Literal["customer", "agent"]
SAMPLE_RATE = 8000

# WebSocket close codes the connectors use (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


def websocket_path(v: str) -> str:
    """A configured endpoint path (a pydantic validator's body): it starts with / and has no
    query, fragment, braces or spaces."""
    if not v.startswith("/") or any(c in v for c in "?#{} "):
        raise ValueError("path must start with / and contain no query, fragment, braces or spaces")
    return v


@dataclass(frozen=True, slots=True)
class Frame:
    """Normalised audio: int16 L16 8 kHz mono samples of one channel of one dialog.
    `position` is the index of the first sample since the start of the call, so pauses and
    discarded stretches keep the timeline honest."""
    dialog_id: str
    channel: Channel
    position: int
    samples: np.ndarray


class ConnectorError(Exception):
    """A protocol violation or unusable input, with a stable code for the peer."""

    def __init__(self, code: str, message: str, close_code: int = 1008):
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


class StreamPort(Protocol):
    """THE stream contract, as a connector sees it: what it may do with the call its peer
    streams into. The gateway attaches a stream to its call (busy check per channel, start,
    metrics) before handing the connector this port."""

    dialog_id: str

    def push(self, frame: Frame) -> None:
        """Normalised audio of the call (cheap: queued for the engine)."""

    async def wait_capacity(self) -> None:
        """Return when the call can take more audio. A connector whose peer may send faster
        than real time awaits this after each frame, so TCP slows the sender down instead of
        the engine dropping audio."""

    def report(self, status: str, reason: str) -> None:
        """A call status the connector's protocol defines (AudioHook's ERR_CODE_xx) and why."""

    async def finish(self) -> None:
        """The call's final results now (a protocol whose close waits for them: AudioHook's
        `closed`). The caller bounds the wait."""

    async def end(self, reason: str, resume_within_s: float = 0.0) -> None:
        """The stream is over; called once, last. `reason`: "completed" or "disconnected", or
        an error code. `resume_within_s` > 0: the peer may reopen the stream (a hold): the call
        stays open that long for a stream of the same call to attach again."""


WireKind = Literal["text", "binary", "close", "error"]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One message from the peer: text, binary, the close of the socket, or a socket error."""
    kind: WireKind
    data: str | bytes = b""


class WireSocket(Protocol):
    """The socket a connector's serve loop reads and writes (an aiohttp WebSocket in the
    gateway: gateway/web/websocket.py; anything with these four methods in a test)."""

    @property
    def closed(self) -> bool: ...

    async def receive(self, timeout: float | None = None) -> WireMessage:
        """The next text, binary, close or error message (pings are answered below this);
        asyncio.TimeoutError after `timeout` seconds without one."""

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int = 1000, message: bytes = b"") -> None: ...
