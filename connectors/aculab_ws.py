"""The Aculab Users API's one-time WebSocket (the GET form of register, update and verify;
seed: aculab-vb-users-api.txt): binary WAV data, then the text message {"event": "audio_sent"};
the server answers one event ({"event": <action>, ...} or a reject) and closes.

This socket carries one file, not a live call: nothing is attached to a dialog. `serve` is the
protocol over a `WireSocket` (connectors/base.py); what the file is used for (`run`) and how a
failure reads (`reject`) are the gateway's (gateway/web/aculab.py)."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from connectors import safejson
from connectors.base import WireSocket

MAX_EVENT_CHARS = 1024         # a text message on the one-time WebSocket is {"event": "audio_sent"}


class StreamRefused(Exception):
    """Why the socket's audio is refused: an HTTP-style status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _event(text: str) -> Any:
    if len(text) > MAX_EVENT_CHARS:
        return None
    try:
        data = safejson.loads(text)
    except safejson.JsonInputError:
        return None
    return data.get("event") if isinstance(data, dict) else None


async def serve(ws: WireSocket, run: Callable[[bytes], Awaitable[dict]], reject: Callable[[BaseException], dict],
                max_bytes: int, idle_s: float) -> None:
    """Collect the file, run it, answer once, close. `run(audio)` returns the reply event or
    raises; `reject(exc)` renders any failure (StreamRefused of this protocol, the action's own
    errors, a server fault) as the reject event."""
    chunks: list[bytes] = []
    size = 0

    async def send(event: dict) -> None:
        await ws.send_text(json.dumps(event))
    try:
        while True:
            try:
                msg = await ws.receive(timeout=idle_s)
            except asyncio.TimeoutError:
                await send(reject(StreamRefused(408, "TIMEOUT", f"no message for {idle_s:g} s: send the wav "
                                                                "data, then {\"event\": \"audio_sent\"}")))
                break
            if msg.kind == "binary":
                assert isinstance(msg.data, bytes)
                size += len(msg.data)
                if size > max_bytes:
                    await send(reject(StreamRefused(413, "BODY_TOO_LARGE", f"audio over {max_bytes} bytes")))
                    break
                chunks.append(msg.data)
                continue
            if msg.kind != "text":
                break
            assert isinstance(msg.data, str)
            if _event(msg.data) != "audio_sent":
                await send(reject(StreamRefused(400, "BAD_MESSAGE", "text messages must be "
                                                                    "{\"event\": \"audio_sent\"}")))
                break
            try:
                reply = await run(b"".join(chunks))
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception as exc:               # noqa: BLE001 - every failure is answered
                await send(reject(exc))
                break
            await send(reply)
            break
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:                       # noqa: BLE001 - a fault is answered, not a traceback
        if not ws.closed:
            await send(reject(exc))
    finally:
        await ws.close()
