"""NICE CXone Agent Assist Hub, "Custom Agent Assist Endpoint" (CAAE) audio relay, server side.

CXone is the WebSocket client; it opens ONE socket per stream perspective of a contact:
`TX` (what the agent hears: the contact), `RX` (what the agent's phone transmits: the agent)
or `MIX` (both, mixed mono). NICE documents little of the wire format (docs/nice-cxone.md lists
what is documented and what is inferred), so this connector is faithful to what is documented
and tolerant of the rest:

1. The first message is a TEXT message with a JSON object, the "initial message" (handshake).
   Keys are matched case-insensitively and without `_`/`-` (`streamPerspective`,
   `stream_perspective`, `STREAMPERSPECTIVE` are one key). Fields:
   - `streamPerspective`: TX | RX | MIX (documented; required)
   - the contact id (required), under any of CONTACT_ID_KEYS: the call's master contact id,
     which is its masterId (dialog id) and `ccaas_session_id`
   - script parameters (optional), under any of SCRIPT_PARAMS_KEYS: an object or a JSON string
     of one (Studio's `{customPayload.asJSON()}`); scalar members become biokeys
   - an audio description (optional), under any of AUDIO_KEYS: `{encoding, sampleRate,
     channels}`; default G.711 mu-law, 8 kHz, mono, raw (NICE's documented format)
   - informational: `agentId`, a business unit, `ani`
   A wrapper object (`{"event": "start", "start": {...}}`, as Twilio-like relays send) is looked
   into when the top level has no `streamPerspective`; one `{"event": "connected"}` greeting
   before it is ignored.
   The server answers `{"status": "ok", "streamPerspective", "contactId", "encoding",
   "sampleRate"}` (a "handshake response" exists for voice; NICE's schema for it is unknown).
2. Audio: BINARY messages of raw audio in the handshake's encoding, any length; or TEXT
   `{"event": "media", "media": {"payload": "<base64>"}}` or `{"audio": "<base64>"}`. Other
   JSON text messages (`connected`, `mark`, `dtmf`, a repeated handshake) are ignored.
3. End: the socket's close (hold also closes it; resume opens a new socket with the same
   handshake), a `{"event": "stop"}` text message, or an empty message (text or binary).

A bad message gets `{"status": "error", "error": {"code", "message"}}` and a close with the
code's close code; it ends only its own socket.

`NiceStream` is the pure state machine; `serve()` runs it over a WireSocket and drives the
contact's call through the StreamPort the gateway's `StreamOpener` attaches (connectors/base.py,
the one stream contract). Nothing here imports aiohttp, the engine or a surface."""
from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors import safejson
from connectors.base import (
    CLOSE_INTERNAL, CLOSE_INVALID, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED, Channel,
    ConnectorError, Frame, StreamPort, WireSocket, websocket_path,
)
from connectors.codecs import SUPPORTED_RATES, StreamResampler, decode

log = structlog.get_logger(__name__)

Perspective = Literal["TX", "RX", "MIX"]
PERSPECTIVES: tuple[Perspective, ...] = ("TX", "RX", "MIX")

# Handshake keys, normalised (lower case, letters and digits only: see norm_key).
PERSPECTIVE_KEYS = ("streamperspective", "perspective")
CONTACT_ID_KEYS = ("contactid", "mastercontactid", "acdcallid", "masterid")
SCRIPT_PARAMS_KEYS = ("scriptparams", "scriptparameters", "params", "custompayload")
AUDIO_KEYS = ("audio", "audioformat", "mediaformat", "format")
AGENT_ID_KEYS = ("agentid",)
BUSINESS_UNIT_KEYS = ("businessunit", "businessunitid", "busno", "buid")
ANI_KEYS = ("ani",)
WRAPPER_KEYS = ("start", "handshake", "data", "payload")
STOP_EVENTS = ("stop", "end")
MAX_ID_CHARS = 256
MAX_PARAM_CHARS = 1024
MAX_PARAMS = 64

_ENCODINGS = {
    "mulaw": ("mulaw", "ulaw", "pcmu", "g711ulaw", "g711mulaw", "g711u", "g711", "audioxmulaw", "xmulaw",
              "audiopcmu", "mulaw8"),
    "alaw": ("alaw", "pcma", "g711alaw", "g711a", "audioxalaw", "xalaw", "audiopcma"),
    "l16": ("l16", "linear16", "pcm", "pcm16", "s16le", "slin", "slin16", "lpcm", "audiol16", "linearpcm"),
}
ENCODING_NAMES = {alias: name for name, aliases in _ENCODINGS.items() for alias in aliases}


class NiceConfig(BaseModel):
    """The `[nice]` section of the configuration (documented in config/default.toml)."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    path: str = "/nice/ws"
    header: str = "X-Api-Key"
    resume_idle_s: float = Field(default=120.0, ge=0, le=3600)
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    max_frame_bytes: int = Field(default=65536, ge=160, le=1 << 20)
    auth_failure_delay_s: float = Field(default=0.5, ge=0, le=10)
    final_results_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return websocket_path(v)

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", v):
            raise ValueError("header must be an HTTP header name (letters, digits, '-', ...)")
        if v.lower() in ("authorization", "host", "connection", "upgrade", "cookie"):
            raise ValueError(f"header {v!r} is reserved; use a custom name such as X-Api-Key")
        return v


def norm_key(key: str) -> str:
    """`streamPerspective`, `stream_perspective` and `STREAM-PERSPECTIVE` are one key."""
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _normalised(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.setdefault(norm_key(str(k)), v)        # the first of two spellings wins
    return out


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


@dataclass(frozen=True)
class AudioFormat:
    encoding: str = "mulaw"                 # connectors.codecs.ENCODINGS
    sample_rate: int = 8000


@dataclass(frozen=True)
class Handshake:
    """What CXone's initial message says about the stream."""
    perspective: Perspective
    contact_id: str
    script_params: dict[str, str] = field(default_factory=dict)
    audio: AudioFormat = AudioFormat()
    agent_id: str | None = None
    business_unit: str | None = None
    ani: str | None = None

    @property
    def channel(self) -> Channel:
        """RX is the agent; TX (the contact) and MIX feed the customer channel."""
        return "agent" if self.perspective == "RX" else "customer"

    @property
    def mixed(self) -> bool:
        return self.perspective == "MIX"

    def ack(self) -> str:
        return json.dumps({"status": "ok", "streamPerspective": self.perspective, "contactId": self.contact_id,
                           "encoding": self.audio.encoding, "sampleRate": self.audio.sample_rate})


@dataclass(frozen=True)
class StreamEnd:
    """The peer ended the stream in-band: `stop` event or an empty message."""
    how: str


def _bad(code: str, message: str, close_code: int = CLOSE_INVALID) -> ConnectorError:
    return ConnectorError(code, message, close_code)


def _json_object(text: str, code: str, what: str) -> dict[str, Any]:
    """`text` parsed as a JSON object, or ConnectorError(code, close 1007) saying `what` it must be."""
    try:
        data = safejson.loads(text)
    except safejson.JsonInputError as exc:
        raise _bad(code, f"{what}: {exc.message}") from None
    if not isinstance(data, dict):
        raise _bad(code, f"{what}, not a JSON {type(data).__name__}")
    return data


def _text_id(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _bad("BAD_HANDSHAKE", f"{what} must be a string or a number")
    text = str(value).strip()
    if not text:
        raise _bad("BAD_HANDSHAKE", f"{what} is empty")
    if len(text) > MAX_ID_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _bad("BAD_HANDSHAKE", f"{what} must be at most {MAX_ID_CHARS} printable characters")
    return text


def _optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip()
    return text[:MAX_ID_CHARS] or None


def parse_script_params(value: Any) -> dict[str, str]:
    """Script parameters as Studio sends them (an object, or a JSON string of one: the Script
    Parameters snippet's `{customPayload.asJSON()}`): their scalar members as strings. Nested
    values are not biokeys and are left out; a string that is not a JSON object is refused."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = _json_object(value, "BAD_SCRIPT_PARAMS", "scriptParams must be a JSON object (or a string holding one)")
    if not isinstance(value, dict):
        raise _bad("BAD_SCRIPT_PARAMS", "scriptParams must be a JSON object (or a string holding one)")
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, (str, int, float)) or not str(k).strip():
            continue
        text = str(v).strip()
        if text and len(text) <= MAX_PARAM_CHARS and len(out) < MAX_PARAMS:
            out[str(k).strip()[:128]] = text
    return out


def parse_audio_format(value: Any) -> AudioFormat:
    """The optional audio description; absent: NICE's documented G.711 mu-law 8 kHz mono."""
    if value is None:
        return AudioFormat()
    if isinstance(value, str):           # a bare encoding name
        value = {"encoding": value}
    if not isinstance(value, dict):
        raise _bad("BAD_AUDIO_FORMAT", "the audio description must be an object {encoding, sampleRate, channels}")
    d = _normalised(value)
    enc_raw = _pick(d, ("encoding", "codec", "format", "mediaformat", "mimetype"))
    encoding = "mulaw"
    if enc_raw is not None:
        name = str(enc_raw).lower().replace("µ", "mu").replace("μ", "mu")
        encoding = ENCODING_NAMES.get(re.sub(r"[^a-z0-9]", "", name), "")
        if not encoding:
            raise _bad("UNSUPPORTED_AUDIO", f"audio encoding {str(enc_raw)[:40]!r} is not supported; use "
                       "MULAW (G.711 mu-law), ALAW or L16", CLOSE_UNSUPPORTED)
    rate_raw = _pick(d, ("samplerate", "sampleratehertz", "rate", "samplerates"))
    rate = 8000
    if rate_raw is not None:
        try:
            rate = int(rate_raw)
        except (TypeError, ValueError):
            raise _bad("BAD_AUDIO_FORMAT", "sampleRate must be a number") from None
        if rate not in SUPPORTED_RATES:
            raise _bad("UNSUPPORTED_AUDIO", f"sampleRate {rate} is not supported; use one of "
                       + ", ".join(map(str, SUPPORTED_RATES)), CLOSE_UNSUPPORTED)
    channels = _pick(d, ("channels", "channelcount", "numchannels"))
    if channels is not None and str(channels) != "1":
        raise _bad("UNSUPPORTED_AUDIO", "a NICE stream carries one perspective, mono: channels must be 1",
                   CLOSE_UNSUPPORTED)
    return AudioFormat(encoding, rate)


def parse_handshake(text: str) -> Handshake:
    """The initial message, or ConnectorError (BAD_HANDSHAKE, ...) saying what is wrong."""
    d = _normalised(_json_object(text, "BAD_HANDSHAKE", "the first message must be a JSON object with "
                                 "streamPerspective and contactId"))
    if _pick(d, PERSPECTIVE_KEYS) is None:
        wrapped = next((v for k in WRAPPER_KEYS if isinstance(v := d.get(k), dict)), None)
        if wrapped is not None:
            d = {**d, **_normalised(wrapped)}
    perspective = _pick(d, PERSPECTIVE_KEYS)
    if perspective is None:
        raise _bad("BAD_HANDSHAKE", "the first message has no streamPerspective (TX, RX or MIX)")
    p = str(perspective).strip().upper()
    if p not in PERSPECTIVES:
        raise _bad("BAD_PERSPECTIVE", f"streamPerspective {str(perspective)[:20]!r} is not TX, RX or MIX")
    params = parse_script_params(_pick(d, SCRIPT_PARAMS_KEYS))
    contact = _pick(d, CONTACT_ID_KEYS)
    if contact is None:                  # some scripts pass it in the script parameters only
        np_ = {norm_key(k): v for k, v in params.items()}
        contact = _pick(np_, CONTACT_ID_KEYS)
    if contact is None:
        raise _bad("BAD_HANDSHAKE", "the first message has no contact id (contactId, masterContactId or acdCallId)")
    return Handshake(perspective=p,  # type: ignore[arg-type]  # checked against PERSPECTIVES
                     contact_id=_text_id(contact, "the contact id"), script_params=params,
                     audio=parse_audio_format(_pick(d, AUDIO_KEYS)),
                     agent_id=_optional_text(_pick(d, AGENT_ID_KEYS)),
                     business_unit=_optional_text(_pick(d, BUSINESS_UNIT_KEYS)),
                     ani=_optional_text(_pick(d, ANI_KEYS)))


def _is_connected_event(text: str) -> bool:
    """`{"event": "connected", ...}` without a perspective: what Twilio-like relays send before
    their `start`; tolerated once before the initial message."""
    try:
        data = safejson.loads(text)
    except safejson.JsonInputError:
        return False
    if not isinstance(data, dict):
        return False
    d = _normalised(data)
    return str(d.get("event", "")).strip().lower() == "connected" and _pick(d, PERSPECTIVE_KEYS) is None


class State(enum.Enum):
    AWAITING_HANDSHAKE = "AWAITING_HANDSHAKE"
    STREAMING = "STREAMING"
    ENDED = "ENDED"


class NiceStream:
    """One CXone socket (one perspective of one contact), as a pure state machine: wire
    messages in; a Handshake, Frames, a StreamEnd or nothing out; ConnectorError for a message
    that cannot be used."""

    def __init__(self, max_frame_bytes: int = 65536):
        self.max_frame_bytes = max_frame_bytes
        self.state = State.AWAITING_HANDSHAKE
        self.handshake: Handshake | None = None
        self.position = 0                  # samples of this socket, at 8 kHz
        self.audio_bytes = 0
        self.ignored = 0                   # text messages neither audio nor end
        self._resampler: StreamResampler | None = None
        self._odd = b""                    # L16: a byte of a sample split across two messages

    def on_message(self, kind: Literal["text", "binary"], data: str | bytes) -> Handshake | Frame | StreamEnd | None:
        if self.state is State.ENDED:
            raise _bad("STREAM_ENDED", "the stream already ended", CLOSE_POLICY)
        if self.state is State.AWAITING_HANDSHAKE:
            if len(data) == 0:
                raise _bad("NO_HANDSHAKE", "an empty message before the initial message", CLOSE_POLICY)
            if kind == "binary" or not isinstance(data, str):
                raise _bad("AUDIO_BEFORE_HANDSHAKE", "audio arrived before the initial message (a JSON text "
                           "message with streamPerspective and contactId)", CLOSE_POLICY)
            if self.ignored == 0 and _is_connected_event(data):
                self.ignored += 1          # a relay's greeting before the initial message (once)
                return None
            hs = parse_handshake(data)
            self.handshake = hs
            self.state = State.STREAMING
            if hs.audio.sample_rate != 8000:
                self._resampler = StreamResampler(hs.audio.sample_rate)
            return hs
        if len(data) == 0:
            self.state = State.ENDED
            return StreamEnd("empty_message")
        if isinstance(data, bytes):
            return self._audio(data)
        return self._text(data)

    def _text(self, text: str) -> Frame | StreamEnd | None:
        if len(text) > 2 * self.max_frame_bytes + 1024:
            raise _bad("FRAME_TOO_LARGE", f"a text message of {len(text)} characters exceeds the limit", CLOSE_TOO_BIG)
        d = _normalised(_json_object(text, "BAD_MESSAGE", "a text message must be a JSON object (media, audio "
                                     "or stop)"))
        event = d.get("event")
        if isinstance(event, str) and event.strip().lower() in STOP_EVENTS:
            self.state = State.ENDED
            return StreamEnd("stop")
        payload: Any = None
        if isinstance(event, str) and event.strip().lower() == "media":
            media = d.get("media")
            payload = _normalised(media).get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                raise _bad("BAD_MESSAGE", "a media event needs media.payload (base64 audio)")
        elif isinstance(d.get("audio"), str):
            payload = d["audio"]
        if payload is None:
            self.ignored += 1
            return None
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("BAD_BASE64", "the audio of a text message is not valid base64") from None
        if not raw:
            return None                    # an empty payload is not the end: only an empty message is
        return self._audio(raw)

    def _audio(self, data: bytes) -> Frame | None:
        if len(data) > self.max_frame_bytes:
            raise _bad("FRAME_TOO_LARGE", f"an audio message of {len(data)} bytes exceeds the limit of "
                       f"{self.max_frame_bytes}", CLOSE_TOO_BIG)
        hs = self.handshake
        assert hs is not None
        self.audio_bytes += len(data)
        if hs.audio.encoding == "l16":
            data = self._odd + data
            self._odd = data[-1:] if len(data) % 2 else b""
            data = data[: len(data) - len(self._odd)]
            if not data:
                return None
        samples = decode(data, hs.audio.encoding)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        if not len(samples):
            return None
        frame = Frame(hs.contact_id, hs.channel, self.position, np.ascontiguousarray(samples))
        self.position += len(samples)
        return frame


def error_text(code: str, message: str) -> str:
    return json.dumps({"status": "error", "error": {"code": code, "message": message}})


def read_error_text(close_code: int) -> str | None:
    """For gateway.web.websocket.ReportingWebSocket: the documented error for a frame that
    aiohttp's reader refused (too big, text not UTF-8, bad framing)."""
    if close_code == CLOSE_TOO_BIG:
        return error_text("FRAME_TOO_LARGE", "a message exceeds the size limit")
    if close_code == CLOSE_INVALID:
        return error_text("BAD_TEXT", "a text message is not valid UTF-8")
    return error_text("PROTOCOL_ERROR", "the WebSocket framing is invalid")


# -- the socket loop ----------------------------------------------------------------------------

class StreamOpener(Protocol):
    """The gateway's side of one socket."""

    async def attach(self, handshake: Handshake) -> StreamPort:
        """Attach the socket's perspective to its contact's call (the ack waits for it). Raise
        ConnectorError to refuse (that perspective of the contact is already streaming, ...)."""

    def ended(self, outcome: str) -> None:
        """The socket is over (always once, last, attached or not): "completed" (closed, or ended
        in-band), "disconnected" (a socket error) or an error code."""


_CLEANUPS: set[asyncio.Task] = set()


async def serve(ws: WireSocket, opener: StreamOpener, cfg: NiceConfig) -> str:
    """Run one CXone socket until it ends; returns its outcome. Never raises for peer
    misbehaviour. The end of the socket ends its stream: a close (or a drop) may be a hold, so
    the call stays open `cfg.resume_idle_s` for the same contact to come back; an in-band end
    (stop, empty message) first publishes the call's final results and ends at once; a
    server fault ends the call as an error."""
    stream = NiceStream(cfg.max_frame_bytes)
    port: StreamPort | None = None
    outcome = "completed"
    in_band_end = False
    slog = log
    loop = asyncio.get_running_loop()
    handshake_by = loop.time() + cfg.handshake_timeout_s
    try:
        while True:
            try:
                wait = max(0.0, handshake_by - loop.time()) if stream.handshake is None else None
                msg = await ws.receive(timeout=wait)
            except asyncio.TimeoutError:
                raise _bad("HANDSHAKE_TIMEOUT", f"no initial message within {cfg.handshake_timeout_s:g} s",
                           CLOSE_POLICY) from None
            if msg.kind == "close":
                break
            if msg.kind == "error":
                outcome = "disconnected"
                slog.info("nice_socket_error", error=str(msg.data)[:200])
                break
            out = stream.on_message(msg.kind, msg.data)
            if isinstance(out, Frame):
                assert port is not None
                port.push(out)
                await port.wait_capacity()
            elif isinstance(out, Handshake):
                slog = log.bind(contact_id=out.contact_id, perspective=out.perspective)
                port = await opener.attach(out)
                await ws.send_text(out.ack())
                slog.info("nice_stream_started", agent_id=out.agent_id, encoding=out.audio.encoding,
                          sample_rate=out.audio.sample_rate)
            elif isinstance(out, StreamEnd):
                in_band_end = True
                assert port is not None
                try:
                    await asyncio.wait_for(port.finish(), cfg.final_results_timeout_s)
                except asyncio.TimeoutError:
                    slog.warning("nice_final_results_timeout", timeout_s=cfg.final_results_timeout_s)
                if not ws.closed:
                    await ws.send_text(json.dumps({"status": "ended", "contactId": port.dialog_id}))
                    await ws.close(code=CLOSE_NORMAL)
                break
    except ConnectorError as err:
        outcome = err.code
        slog.info("nice_protocol_error", code=err.code)
        await _send_error(ws, err)
    except (asyncio.CancelledError, ConnectionError):
        outcome = "disconnected"
        raise
    except Exception:  # noqa: BLE001 - every path must end the stream and its call
        outcome = "INTERNAL"
        slog.exception("nice_stream_failed")
        await _send_error(ws, _bad("INTERNAL", "internal error", CLOSE_INTERNAL))
    finally:
        # aiohttp cancels the handler once the peer has gone; the stream's end must run to
        # completion anyway, so it runs in a task of its own.
        cleanup = asyncio.ensure_future(_end(ws, stream, opener, port, cfg, outcome, in_band_end, slog))
        _CLEANUPS.add(cleanup)
        cleanup.add_done_callback(_CLEANUPS.discard)
        outcome = await asyncio.shield(cleanup)
    return outcome


async def _send_error(ws: WireSocket, err: ConnectorError) -> None:
    try:
        if not ws.closed:
            await ws.send_text(error_text(err.code, err.message))
            await ws.close(code=err.close_code, message=err.code.encode()[:120])
    except (ConnectionError, RuntimeError):
        pass


async def _end(ws: WireSocket, stream: NiceStream, opener: StreamOpener, port: StreamPort | None, cfg: NiceConfig,
               outcome: str, in_band_end: bool, slog: Any) -> str:
    try:
        if not ws.closed:
            await ws.close()
    except Exception:  # noqa: BLE001 - every path must end the stream and its call
        pass
    if port is not None:
        # A peer's protocol error ends its socket, not the call: CXone may reconnect. Only a
        # fault of ours is the call's error.
        reason = "SYSTEM_ERROR" if outcome == "INTERNAL" else ("completed" if outcome == "completed" else "disconnected")
        resume = 0.0 if in_band_end or reason == "SYSTEM_ERROR" else cfg.resume_idle_s
        try:
            await port.end(reason, resume_within_s=resume)
        except Exception:  # noqa: BLE001 - every path must end the stream and its call
            slog.exception("nice_end_failed")
    opener.ended(outcome)
    slog.info("nice_stream_ended", outcome=outcome, audio_bytes=stream.audio_bytes, ignored=stream.ignored,
              in_band_end=in_band_end)
    return outcome
