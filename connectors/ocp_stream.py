"""OCP direct stream: `GET /agent-vb-mw/stream?token=...` (WebSocket).

Wire protocol (seed: ocp-vb-standalone-api.txt): a RecognitionConfig JSON text message
first, then audio as binary messages or base64 text messages, then an empty message ends
the session and the server closes. Errors are sent as one JSON text message
`{"error": {"code", "message"}}` followed by a close with the matching close code."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Callable, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors import safejson
from connectors.base import (  # noqa: F401  (the close codes: imported from here too)
    CLOSE_INTERNAL, CLOSE_INVALID, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, ConnectorError, Frame,
    StreamPort, WireSocket,
)
from connectors.codecs import SUPPORTED_RATES, StreamResampler, decode

log = structlog.get_logger(__name__)


class RecognitionConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    encoding: Literal["l16", "mulaw", "alaw"] = Field(description="l16 (signed 16-bit little-endian), mulaw or alaw")
    sample_rate: int = Field(8000, description="Hz; audio at other supported rates is resampled to 8 kHz")
    dialog_id: str = Field(min_length=1, max_length=256, description="Must equal the session's masterId")


class OcpStreamDecoder:
    """Pure protocol state machine: wire messages in, normalised frames out."""

    def __init__(self, expected_dialog_id: str, max_frame_bytes: int):
        self.expected_dialog_id = expected_dialog_id
        self.max_frame_bytes = max_frame_bytes
        self.config: RecognitionConfig | None = None
        self.resampler: StreamResampler | None = None
        self.position = 0
        self.ended = False

    def on_config(self, text: str) -> RecognitionConfig:
        try:
            data = safejson.loads(text)
        except safejson.JsonInputError as exc:
            raise ConnectorError("BAD_CONFIG", "the first message must be a RecognitionConfig JSON object: "
                                 + exc.message, CLOSE_INVALID) from None
        if not isinstance(data, dict):
            raise ConnectorError("BAD_CONFIG", "RecognitionConfig must be a JSON object", CLOSE_INVALID)
        try:
            cfg = RecognitionConfig.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConnectorError("BAD_CONFIG", f"RecognitionConfig.{key}: {first['msg']}", CLOSE_INVALID) from None
        if cfg.sample_rate not in SUPPORTED_RATES:
            raise ConnectorError("BAD_SAMPLE_RATE", f"sample_rate {cfg.sample_rate} is not supported; use one of "
                                 + ", ".join(map(str, SUPPORTED_RATES)), CLOSE_UNSUPPORTED)
        if cfg.dialog_id != self.expected_dialog_id:
            raise ConnectorError("DIALOG_MISMATCH", "dialog_id does not match the session token's masterId", CLOSE_POLICY)
        self.config = cfg
        self.resampler = StreamResampler(cfg.sample_rate)
        return cfg

    def on_message(self, kind: Literal["text", "binary"], data: str | bytes) -> Frame | RecognitionConfig | None:
        """Returns a Frame for audio, the config for the first message, None at the end."""
        if self.ended:
            raise ConnectorError("SESSION_ENDED", "the session already ended", CLOSE_POLICY)
        if len(data) == 0:
            if self.config is None:
                raise ConnectorError("NO_CONFIG", "an empty message before the RecognitionConfig", CLOSE_POLICY)
            self.ended = True
            return None
        if self.config is None:
            if kind == "binary" or not isinstance(data, str):
                raise ConnectorError("AUDIO_BEFORE_CONFIG", "audio arrived before the RecognitionConfig", CLOSE_POLICY)
            return self.on_config(data)
        if isinstance(data, str):                  # a text message (kind "text"): base64 audio
            stripped = data.lstrip()
            if stripped.startswith("{"):
                raise ConnectorError("CONFIG_REPEATED", "a second RecognitionConfig is not allowed", CLOSE_POLICY)
            try:
                payload = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ConnectorError("BAD_BASE64", "a text audio message is not valid base64", CLOSE_INVALID) from None
        else:
            payload = data
        if len(payload) > self.max_frame_bytes:
            raise ConnectorError("FRAME_TOO_LARGE", f"an audio message of {len(payload)} bytes exceeds the "
                                 f"limit of {self.max_frame_bytes}", CLOSE_TOO_BIG)
        samples = decode(payload, self.config.encoding)
        assert self.resampler is not None
        samples = self.resampler.process(samples)
        frame = Frame(self.expected_dialog_id, "customer", self.position, samples)
        self.position += len(samples)
        return frame


def error_text(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}})


async def send_error(ws: WireSocket, err: ConnectorError) -> None:
    if not ws.closed:
        await ws.send_text(error_text(err.code, err.message))
        await ws.close(code=err.close_code, message=err.code.encode()[:120])


def read_error_text(max_frame_bytes: int) -> Callable[[int], str | None]:
    """For gateway.web.websocket.ReportingWebSocket: the documented error for a frame that
    aiohttp's reader refused (too big for max_msg_size, text not UTF-8), like the decoder's."""
    def report(close_code: int) -> str | None:
        if close_code == CLOSE_TOO_BIG:
            return error_text("FRAME_TOO_LARGE", f"an audio message exceeds the limit of {max_frame_bytes} bytes")
        if close_code == CLOSE_INVALID:
            return error_text("BAD_TEXT", "a text message is not valid UTF-8")
        return error_text("PROTOCOL_ERROR", "the WebSocket framing is invalid")
    return report


async def serve(ws: WireSocket, port: StreamPort, max_frame_bytes: int,
                first_message_timeout_s: float | None = None) -> str:
    """Run one stream until it ends. Returns the end reason ("completed", "disconnected",
    or an error code). Never raises for peer misbehaviour; a socket that sends no
    RecognitionConfig within first_message_timeout_s gets CONFIG_TIMEOUT."""
    decoder = OcpStreamDecoder(port.dialog_id, max_frame_bytes)
    reason = "disconnected"
    try:
        while True:
            try:
                msg = await ws.receive(timeout=first_message_timeout_s if decoder.config is None else None)
            except asyncio.TimeoutError:
                raise ConnectorError("CONFIG_TIMEOUT", f"no RecognitionConfig within {first_message_timeout_s:g} s",
                                     CLOSE_POLICY) from None
            if msg.kind == "close":
                break
            if msg.kind == "error":
                reason = "socket_error"
                break
            out = decoder.on_message(msg.kind, msg.data)
            if isinstance(out, Frame):
                if len(out.samples):
                    port.push(out)
                    await port.wait_capacity()
            elif isinstance(out, RecognitionConfig):
                await ws.send_text(json.dumps({"event": "session_started", "dialog_id": out.dialog_id,
                                              "encoding": out.encoding, "sample_rate": out.sample_rate}))
            elif out is None:
                reason = "completed"
                await ws.send_text(json.dumps({"event": "session_ended", "dialog_id": port.dialog_id}))
                await ws.close(code=CLOSE_NORMAL)
                break
    except ConnectorError as err:
        reason = err.code
        log.info("stream_protocol_error", code=err.code, dialog_id=port.dialog_id)
        await send_error(ws, err)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        reason = "INTERNAL"
        log.exception("stream_failed", dialog_id=port.dialog_id)
        await send_error(ws, ConnectorError("INTERNAL", "internal error", CLOSE_INTERNAL))
    finally:
        await port.end(reason)
    return reason
