"""Genesys Cloud AudioHook Monitor (protocol version 2), server side.

`AudioHookSession` is the pure protocol state machine: JSON text messages and binary audio in,
server messages and normalised `Frame`s out. `serve()` is the socket loop that runs it: on `open`
it asks the gateway's `StreamOpener` to attach the session to its call, and from then on drives
the call through the `StreamPort` it got (connectors/base.py, the one stream contract). Nothing
here imports aiohttp, the engine or a surface. Protocol notes: docs/genesys-audiohook.md and the
protocol brief.

States: PREPARING -> (open/opened) ACTIVE <-> PAUSED -> (close) CLOSING -> (closed) CLOSED.
A protocol violation sends `disconnect {reason: error}` and moves to ERROR: further audio is
dropped, nothing more is signalled, and a later `close` is still answered with `closed`."""
from __future__ import annotations

import asyncio
import enum
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import structlog
from pydantic import (
    BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError, field_validator,
)


from connectors import safejson
from connectors.base import SAMPLE_RATE, Channel, ConnectorError, Frame, StreamPort, WireSocket, websocket_path
from connectors.codecs import decode

log = structlog.get_logger(__name__)

PROTOCOL_VERSION: Literal["2"] = "2"
NULL_UUID = "00000000-0000-0000-0000-000000000000"
MAX_MESSAGE_CHARS = 65535            # both directions (reference client and server)
MAX_INFO_CHARS = 1024

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DURATION_PATTERN = r"^PT(?:\d*\.)?\d+S$"
LANGUAGE_PATTERN = r"^[a-z]{2,3}-[A-Za-z]{2,3}$"
Uuid = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]
Language = Annotated[str, StringConstraints(pattern=LANGUAGE_PATTERN)]
_UUID_RE = re.compile(UUID_PATTERN)

# Call statuses this connector reports (the gateway publishes them on the dialog; meanings in
# docs/genesys-audiohook.md). ERR_CODE_01..06 are ours: Genesys defines no such codes.
ERR_UNAUTHORIZED = "ERR_CODE_01"      # open.organizationId is not the API key's organisation
ERR_PROTOCOL = "ERR_CODE_02"          # protocol violation by the client
ERR_MEDIA = "ERR_CODE_03"             # no usable media offered
ERR_MISSED_PINGS = "ERR_CODE_04"      # the client stopped pinging
ERR_CLIENT = "ERR_CODE_05"            # the client reported an error / closed with reason error
ERR_DROPPED = "ERR_CODE_06"           # socket dropped without a close transaction
SYSTEM_ERROR = "SYSTEM_ERROR"


class AudioHookConfig(BaseModel):
    """The `[audiohook]` section of the configuration (documented in config/default.toml)."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    path: str = "/audiohook/ws"
    clock_skew_s: int = Field(default=3, ge=0, le=300)
    max_signature_age_s: int = Field(default=10, ge=1, le=3600)
    min_nonce_length: int = Field(default=22, ge=8, le=256)
    nonce_cache_size: int = Field(default=100_000, ge=100)
    signature_failure_delay_s: float = Field(default=0.5, ge=0, le=10)
    max_frame_bytes: int = Field(default=65536, ge=320, le=1 << 20)
    open_timeout_s: float = Field(default=10.0, gt=0)
    ping_timeout_s: float = Field(default=30.0, ge=0)
    close_timeout_s: float = Field(default=5.0, gt=0, le=9)
    linger_s: float = Field(default=5.0, gt=0)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return websocket_path(v)


# -- durations --------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    return float(text[2:-1])


def format_duration(seconds: float) -> str:
    s = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"PT{s or '0'}S"


def duration_samples(text: str) -> int:
    return int(round(parse_duration(text) * SAMPLE_RATE))


# -- message models -----------------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ClientEnvelope(_Model):
    """Every client message: `{version, id, type, seq, serverseq, position, parameters}`."""
    version: Literal["2"]
    id: Uuid
    type: str
    seq: StrictInt = Field(ge=1)
    serverseq: StrictInt = Field(ge=0)
    position: Duration
    parameters: dict[str, Any]


class MediaOffer(_Model):
    type: Literal["audio"]
    format: Literal["PCMU", "L16"]
    channels: list[Literal["external", "internal"]] = Field(min_length=1, max_length=2)
    rate: Literal[8000]

    @field_validator("channels")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("channels must be distinct")
        return v


# No length limits of our own on these strings and lists: the protocol sets none (an `open` the
# reference server accepts must not be refused here); the 64 KiB message limit bounds them all.
class Participant(_Model):
    id: Uuid
    ani: str = ""
    aniName: str = ""
    dnis: str = ""


class OpenParameters(_Model):
    organizationId: Uuid
    conversationId: Uuid
    participant: Participant
    media: list[dict[str, Any]]
    language: Language | None = None
    supportedLanguages: StrictBool | None = None
    customConfig: Any = None            # free-form; the gateway reads the keys it knows


class CloseParameters(_Model):
    reason: Literal["end", "error", "disconnect", "reconnect"] = "end"


class PingParameters(_Model):
    rtt: Duration | None = None


class UpdateParameters(_Model):
    language: Language | None = None


class EmptyParameters(_Model):
    pass


class DiscardParameters(_Model):
    """`resumed` and `discarded`: where the gap starts and how long it is."""
    start: Duration
    discarded: Duration


class ErrorParameters(_Model):
    code: StrictInt = Field(ge=400, le=9999)
    message: str
    retryAfter: Duration | None = None


CLIENT_PARAMETERS: dict[str, type[BaseModel]] = {
    "open": OpenParameters, "close": CloseParameters, "ping": PingParameters, "update": UpdateParameters,
    "paused": EmptyParameters, "resumed": DiscardParameters, "discarded": DiscardParameters,
    "error": ErrorParameters,
}


ServerMessageType = Literal["opened", "closed", "pong", "pause", "resume", "disconnect", "updated", "event", "reconnect"]


class ServerEnvelope(BaseModel):
    """Every server message: `{version, id, type, seq, clientseq, parameters}` (no position)."""
    model_config = ConfigDict(extra="forbid")
    version: Literal["2"] = PROTOCOL_VERSION
    id: Uuid
    type: ServerMessageType
    seq: int = Field(ge=1)
    clientseq: int = Field(ge=0)
    parameters: dict[str, Any]


class OpenedParameters(BaseModel):
    media: list[dict[str, Any]] = Field(max_length=1)
    startPaused: bool = False
    supportedLanguages: list[str] | None = None


class DisconnectParameters(BaseModel):
    reason: Literal["completed", "unauthorized", "error"]
    info: str | None = Field(default=None, max_length=MAX_INFO_CHARS)


# -- errors and events --------------------------------------------------------------------------

class AudioHookError(ConnectorError):
    """A reason to end the session with `disconnect`. `status` is the call status to publish;
    `reason` the disconnect reason; the message goes to the client as `info`."""

    def __init__(self, code: str, message: str, status: str = ERR_PROTOCOL,
                 reason: Literal["error", "unauthorized", "completed"] = "error"):
        super().__init__(code, message, 1008)
        self.status = status
        self.reason = reason


def _protocol_error(code: str, message: str) -> AudioHookError:
    return AudioHookError(code, "Client Error: " + message)


class State(enum.Enum):
    PREPARING = "PREPARING"
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    ERROR = "SIGNALED-ERROR"


@dataclass
class OpenRequest:
    params: OpenParameters
    offer: dict[str, Any] | None         # the chosen offer, exactly as received
    media: MediaOffer | None
    probe: bool
    problem: AudioHookError | None = None

    @property
    def customer_audio(self) -> bool:
        """Whether the selected media carries the customer (external) channel: an offer of the
        agent side alone, or no offer at all, is accepted but leaves nothing to score."""
        return self.media is not None and "external" in self.media.channels


@dataclass
class CloseRequest:
    reason: str


@dataclass
class ClientEvent:
    """Something the gateway may want to know: pause, resume, discard, update, client error."""
    type: str
    params: BaseModel
    position: int


@dataclass
class Outcome:
    replies: list[str] = field(default_factory=list)
    event: OpenRequest | CloseRequest | ClientEvent | None = None


_CHANNEL: dict[str, Channel] = {"external": "customer", "internal": "agent"}


def choose_media(offers: list[dict[str, Any]]) -> tuple[dict[str, Any], MediaOffer] | None:
    """Prefer stereo PCMU external+internal, then stereo L16, then mono external PCMU, then mono
    external L16. Without any offer of the external (customer) channel, the first valid offer
    (e.g. the agent's `internal` channel alone): Genesys expects `opened` with exactly one of its
    offers, and the call is then accepted with no customer audio to score. None: no valid
    offer (not PCMU/L16 at 8000 Hz)."""
    valid: list[tuple[dict, MediaOffer]] = []
    for raw in offers:
        try:
            valid.append((raw, MediaOffer.model_validate(raw)))
        except ValidationError:
            continue

    def rank(m: MediaOffer) -> tuple[int, int, int] | None:
        if "external" not in m.channels:
            return None
        return (0 if len(m.channels) == 2 else 1, 0 if m.format == "PCMU" else 1,
                0 if m.channels[0] == "external" else 1)

    ranked = [(r, i, raw, m) for i, (raw, m) in enumerate(valid) if (r := rank(m)) is not None]
    if not ranked:
        return valid[0] if valid else None
    _, _, raw, m = min(ranked, key=lambda t: (t[0], t[1]))
    return raw, m


class AudioHookSession:
    """One AudioHook session (one WebSocket connection), as a pure state machine."""

    def __init__(self, session_id: str, org_id: str, max_frame_bytes: int = 65536):
        self.session_id = session_id
        self.org_id = org_id.lower()
        self.max_frame_bytes = max_frame_bytes
        self.state = State.PREPARING
        self.server_seq = 0
        self.client_seq = 0
        self.media: MediaOffer | None = None
        self.conversation_id: str | None = None
        self.probe = False
        self.samples = 0                 # timeline, in samples per channel, incl. discarded audio
        self.audio_bytes = 0
        self.discarded_samples = 0
        self.position_drift_max = 0      # largest |client position - our timeline|, in samples
        self.language: str | None = None
        self.last_ping = time.monotonic()
        self.opened_at: float | None = None
        self.pong_count = 0

    # -- server messages ---------------------------------------------------------------------
    def _message(self, type_: ServerMessageType, parameters: BaseModel | dict) -> str:
        self.server_seq += 1
        params = parameters if isinstance(parameters, dict) else parameters.model_dump(exclude_none=True)
        env = ServerEnvelope(id=self.session_id, type=type_, seq=self.server_seq, clientseq=self.client_seq,
                             parameters=params)
        text = env.model_dump_json()
        if len(text) > MAX_MESSAGE_CHARS:   # never reached with our own messages; guard anyway
            raise AudioHookError("MESSAGE_TOO_LARGE", f"Server error: a {type_} message would exceed 64 KiB",
                                 status=SYSTEM_ERROR)
        return text

    def disconnect(self, reason: Literal["completed", "unauthorized", "error"], info: str | None = None) -> str | None:
        """The `disconnect` message, or None if one was already signalled or the session closed."""
        if self.state in (State.ERROR, State.CLOSED, State.CLOSING):
            return None
        if info is not None and len(info) > MAX_INFO_CHARS:
            info = info[: MAX_INFO_CHARS - 3] + "..."
        self.state = State.ERROR if reason != "completed" else self.state
        return self._message("disconnect", DisconnectParameters(reason=reason, info=info))

    def closed(self) -> str:
        self.state = State.CLOSED
        return self._message("closed", {})

    def pause(self) -> str:
        return self._message("pause", {})

    def resume(self) -> str:
        return self._message("resume", {})

    def accept(self, req: OpenRequest) -> str:
        """The `opened` answer for an open request without a problem."""
        self.media = req.media
        self.state = State.ACTIVE
        self.opened_at = self.last_ping = time.monotonic()
        # Asked for (`supportedLanguages: true`), the list is sent, empty as the reference server
        # sends it when it has none: voice biometrics does not depend on the language.
        return self._message("opened", OpenedParameters(media=[req.offer] if req.offer is not None else [],
                                                        startPaused=False,
                                                        supportedLanguages=[] if req.params.supportedLanguages
                                                        else None))

    # -- client messages ---------------------------------------------------------------------
    def on_text(self, text: str) -> Outcome:
        if len(text) > MAX_MESSAGE_CHARS:
            raise _protocol_error("MESSAGE_TOO_LARGE", f"text message of {len(text)} characters exceeds 65535")
        try:
            data = safejson.loads(text)
        except safejson.JsonInputError as exc:
            raise _protocol_error(exc.code, f"message is {exc.message}") from None
        if not isinstance(data, dict):
            raise _protocol_error("INVALID_MESSAGE", "message is not a JSON object")
        try:
            env = ClientEnvelope.model_validate(data)
        except ValidationError as exc:
            raise _protocol_error("INVALID_MESSAGE", "Invalid Message: " + _first_error(exc)) from None
        if env.id.lower() != self.session_id.lower():
            raise _protocol_error("SESSION_ID_MISMATCH", "message id does not match Audiohook-Session-Id")
        if self.state is State.ERROR:
            # After a signalled error the numbering may be broken for good (that may have been the
            # error); resynchronise so the client's close is still answered with closed.
            pass
        elif env.seq != self.client_seq + 1:
            raise _protocol_error("SEQ_GAP", f"expected seq={self.client_seq + 1}, got seq={env.seq}")
        elif env.serverseq > self.server_seq:
            raise _protocol_error("SERVERSEQ_AHEAD", f"serverseq={env.serverseq} but the last server message "
                                                     f"had seq={self.server_seq}")
        self.client_seq = env.seq
        model = CLIENT_PARAMETERS.get(env.type)
        if model is None:
            raise _protocol_error("UNKNOWN_TYPE", f"Invalid Message: unknown message type {env.type!r}")
        try:
            params = model.model_validate(env.parameters)
        except ValidationError as exc:
            raise _protocol_error("INVALID_PARAMETERS", f"Invalid Message: {env.type}: {_first_error(exc)}") from None
        return getattr(self, "_on_" + env.type)(env, params)

    def _check_position(self, env: ClientEnvelope) -> None:
        drift = abs(duration_samples(env.position) - self.samples)
        self.position_drift_max = max(self.position_drift_max, drift)

    def _on_open(self, env: ClientEnvelope, p: OpenParameters) -> Outcome:
        if self.state is not State.PREPARING:
            log.info("audiohook_second_open_ignored", session_id=self.session_id)
            return Outcome()
        self.conversation_id = p.conversationId.lower()
        self.probe = p.conversationId == NULL_UUID and p.participant.id == NULL_UUID
        self.language = p.language
        chosen = choose_media(p.media)
        req = OpenRequest(p, chosen[0] if chosen else None, chosen[1] if chosen else None, self.probe)
        if p.organizationId.lower() != self.org_id:
            req.problem = AudioHookError("ORG_MISMATCH", "organizationId does not match the API key's organization",
                                         status=ERR_UNAUTHORIZED, reason="unauthorized")
        elif chosen is None and p.media and not self.probe:
            # Offers exist but none is valid AudioHook media. (No offer at all is accepted, as
            # the reference server does: `opened` with `media: []`.)
            req.problem = AudioHookError("UNSUPPORTED_MEDIA", "Client Error: no supported media offered (need "
                                         "PCMU or L16 at 8000 Hz)", status=ERR_MEDIA)
        return Outcome(event=req)

    def _on_ping(self, env: ClientEnvelope, p: PingParameters) -> Outcome:
        self.last_ping = time.monotonic()
        self.pong_count += 1
        return Outcome(replies=[self._message("pong", {})])

    def _on_close(self, env: ClientEnvelope, p: CloseParameters) -> Outcome:
        if self.state in (State.CLOSING, State.CLOSED):
            return Outcome()
        self._check_position(env)
        self.state = State.CLOSING
        return Outcome(event=CloseRequest(p.reason))

    def _require(self, env: ClientEnvelope, *states: State) -> bool:
        if self.state is State.ERROR:
            return False
        if self.state not in states:
            log.info("audiohook_unexpected_message", type=env.type, state=self.state.value,
                     session_id=self.session_id)
            return False
        return True

    def _on_update(self, env: ClientEnvelope, p: UpdateParameters) -> Outcome:
        if p.language:
            self.language = p.language
        return Outcome(event=ClientEvent("update", p, self.samples))

    def _on_paused(self, env: ClientEnvelope, p: EmptyParameters) -> Outcome:
        if self._require(env, State.ACTIVE, State.PAUSED):
            self.state = State.PAUSED
        return Outcome(event=ClientEvent("paused", p, self.samples))

    def _on_resumed(self, env: ClientEnvelope, p: DiscardParameters) -> Outcome:
        if not self._require(env, State.PAUSED, State.ACTIVE):
            return Outcome()
        self.state = State.ACTIVE
        return self._skip(env, p, "resumed")

    def _on_discarded(self, env: ClientEnvelope, p: DiscardParameters) -> Outcome:
        if not self._require(env, State.ACTIVE, State.PAUSED):
            return Outcome()
        return self._skip(env, p, "discarded")

    def _skip(self, env: ClientEnvelope, p: DiscardParameters, type_: str) -> Outcome:
        n = duration_samples(p.discarded)
        self.samples += n
        self.discarded_samples += n
        self._check_position(env)
        return Outcome(event=ClientEvent(type_, p, self.samples))

    def _on_error(self, env: ClientEnvelope, p: ErrorParameters) -> Outcome:
        return Outcome(event=ClientEvent("error", p, self.samples))

    # -- audio -------------------------------------------------------------------------------
    def on_audio(self, data: bytes, dialog_id: str) -> list[Frame]:
        if self.state in (State.ERROR, State.CLOSING, State.CLOSED):
            return []        # after an error or close: dropped, nothing more is signalled
        if self.state is not State.ACTIVE:
            raise _protocol_error("AUDIO_NOT_ALLOWED", f"Received audio in state {self.state.value}")
        if self.media is None:
            raise _protocol_error("AUDIO_NOT_ALLOWED", "Received audio but no media was selected")
        if len(data) > self.max_frame_bytes:
            raise _protocol_error("FRAME_TOO_LARGE", f"audio frame of {len(data)} bytes exceeds "
                                                     f"{self.max_frame_bytes}")
        nch = len(self.media.channels)
        bps = 1 if self.media.format == "PCMU" else 2
        if len(data) % (nch * bps):
            raise _protocol_error("PARTIAL_SAMPLE", f"audio frame of {len(data)} bytes is not a whole number of "
                                                    f"{nch * bps}-byte sample frames")
        if not data:
            return []
        samples = decode(data, "mulaw" if bps == 1 else "l16").reshape(-1, nch)
        pos = self.samples
        self.samples += samples.shape[0]
        self.audio_bytes += len(data)
        return [Frame(dialog_id, _CHANNEL[name], pos, np.ascontiguousarray(samples[:, k]))
                for k, name in enumerate(self.media.channels)]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "message"
    return f"{loc}: {err['msg']}"


def is_uuid(text: str | None) -> bool:
    return bool(text and _UUID_RE.match(text))


# -- the socket loop ----------------------------------------------------------------------------

class StreamOpener(Protocol):
    """The gateway's side of one session."""

    async def attach(self, req: OpenRequest) -> StreamPort:
        """Attach the session to its call (fast: `opened` waits for it). Raise AudioHookError to
        refuse (the call is busy, ...)."""

    def ended(self, outcome: str) -> None:
        """The session is over (always called once, last, attached or not): "completed",
        "disconnected" or an error code."""


class _Binding:
    """The session's port once attached (None before `open`, and for a probe)."""

    def __init__(self) -> None:
        self.port: StreamPort | None = None

    def report(self, status: str, reason: str) -> None:
        if self.port is not None:
            self.port.report(status, reason)


def call_end_reason(outcome: str) -> str:
    """How a session's outcome ends its call: a protocol error was reported as its own status
    (ERR_CODE_xx) already, so the call itself ends as disconnected; a server fault is a
    SYSTEM_ERROR."""
    return outcome if outcome in ("completed", "disconnected", SYSTEM_ERROR) else "disconnected"


async def serve(ws: WireSocket, session: AudioHookSession, opener: StreamOpener,
                cfg: AudioHookConfig) -> str:
    """Run one AudioHook session until the socket closes. Returns the outcome. Never raises for
    peer misbehaviour; every path ends in the port's `end()` and `opener.ended()`."""
    slog = log.bind(session_id=session.session_id)
    outcome: str | None = None           # set once the session ends or an error is signalled
    closed_sent = asyncio.Event()
    finisher: asyncio.Task | None = None
    started = time.monotonic()
    bound = _Binding()

    async def send(text: str | None) -> None:
        if text is not None and not ws.closed:
            await ws.send_text(text)

    async def signal(err: AudioHookError) -> None:
        nonlocal outcome
        if session.state in (State.ERROR, State.CLOSED, State.CLOSING):
            return
        outcome = err.code
        slog.info("audiohook_disconnect", code=err.code, reason=err.reason, status=err.status,
                  conversation_id=session.conversation_id)
        bound.report(err.status, err.code)
        await send(session.disconnect(err.reason, err.message))

    async def finish_and_close() -> None:
        try:
            if bound.port is not None:
                await asyncio.wait_for(bound.port.finish(), cfg.close_timeout_s)
        except asyncio.TimeoutError:
            slog.warning("audiohook_final_results_timeout", timeout_s=cfg.close_timeout_s)
        except Exception:  # noqa: BLE001 - every path must end the session and its call
            slog.exception("audiohook_final_results_failed")
        await send(session.closed())
        closed_sent.set()

    async def watchdog() -> None:
        closed_at: float | None = None
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if session.state is State.PREPARING and now - started > cfg.open_timeout_s:
                slog.info("audiohook_no_open", timeout_s=cfg.open_timeout_s)
                await ws.close(code=1008, message=b"no open message")
                return
            if (cfg.ping_timeout_s and session.state in (State.ACTIVE, State.PAUSED)
                    and now - session.last_ping > cfg.ping_timeout_s):
                await signal(AudioHookError("MISSED_PINGS", f"Client Error: no ping for {cfg.ping_timeout_s:g} s",
                                            status=ERR_MISSED_PINGS))
            if closed_sent.is_set() or session.state is State.ERROR:
                closed_at = closed_at or now
                if now - closed_at > cfg.linger_s:
                    await ws.close(code=1000)
                    return

    dog = asyncio.create_task(watchdog())
    try:
        while True:
            msg = await ws.receive()
            if msg.kind == "close":
                break
            try:
                if msg.kind == "binary":
                    assert isinstance(msg.data, bytes)
                    frames = session.on_audio(msg.data, bound.port.dialog_id if bound.port else "")
                    if bound.port is not None:
                        for frame in frames:
                            bound.port.push(frame)
                    continue
                if msg.kind == "error":
                    slog.info("audiohook_socket_error", error=str(msg.data))
                    continue
                assert isinstance(msg.data, str)
                out = session.on_text(msg.data)
                for r in out.replies:                    # pong: sent before anything else happens
                    await send(r)
                ev = out.event
                if isinstance(ev, OpenRequest):
                    if not ev.probe:
                        bound.port = await opener.attach(ev)
                    else:
                        slog.info("audiohook_connection_probe")
                    if ev.problem is not None:
                        await signal(ev.problem)
                    else:
                        await send(session.accept(ev))
                        if not ev.probe:
                            slog.info("audiohook_opened", conversation_id=session.conversation_id,
                                      media=ev.media.model_dump() if ev.media else None)
                elif isinstance(ev, CloseRequest):
                    if ev.reason == "error":
                        bound.report(ERR_CLIENT, "CLIENT_CLOSED_WITH_ERROR")
                    finisher = asyncio.create_task(finish_and_close())
                elif isinstance(ev, ClientEvent):
                    if ev.type == "error" and isinstance(ev.params, ErrorParameters):
                        p = ev.params
                        slog.warning("audiohook_client_error", code=p.code, message=p.message[:300])
                        bound.report(ERR_CLIENT, f"CLIENT_ERROR_{p.code}")
                    slog.info("audiohook_" + ev.type, position_s=round(ev.position / SAMPLE_RATE, 3))
            except AudioHookError as err:
                await signal(err)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - every path must end the session and its call
        slog.exception("audiohook_session_failed")
        outcome = "SYSTEM_ERROR"
        bound.report(SYSTEM_ERROR, "INTERNAL")
        try:
            await send(session.disconnect("error", "Server error: internal error"))
        except Exception:  # noqa: BLE001 - every path must end the session and its call
            pass
    finally:
        dog.cancel()
        # aiohttp cancels the handler once the peer has gone; the cleanup (final results, the
        # dialog's end) must run to completion anyway, so it runs in its own task.
        cleanup = asyncio.ensure_future(_cleanup(ws, session, opener, bound, cfg, outcome, finisher,
                                                 closed_sent.is_set(), slog))
        _CLEANUPS.add(cleanup)
        cleanup.add_done_callback(_CLEANUPS.discard)
        outcome = await asyncio.shield(cleanup)
    return outcome


_CLEANUPS: set[asyncio.Task] = set()


async def _cleanup(ws: WireSocket, session: AudioHookSession, opener: StreamOpener, bound: _Binding,
                   cfg: AudioHookConfig, outcome: str | None, finisher: asyncio.Task | None, closed_sent: bool,
                   slog) -> str:
    if finisher is not None:
        try:
            await finisher
            closed_sent = True
        except Exception:  # noqa: BLE001 - every path must end the session and its call
            pass
    if outcome is None:
        if closed_sent:
            outcome = "completed"
        else:
            outcome = "disconnected"
            if session.opened_at is not None and not session.probe:
                # An abrupt drop is cleaned up like a close: final results, then the end.
                bound.report(ERR_DROPPED, "SOCKET_DROPPED")
                try:
                    if bound.port is not None:
                        await asyncio.wait_for(bound.port.finish(), cfg.close_timeout_s)
                except Exception:  # noqa: BLE001 - every path must end the session and its call
                    slog.warning("audiohook_final_results_failed_after_drop")
    try:
        if not ws.closed:
            await ws.close()
    except Exception:  # noqa: BLE001 - every path must end the session and its call
        pass
    try:
        if bound.port is not None:
            await bound.port.end(call_end_reason(outcome))
    except Exception:  # noqa: BLE001 - every path must end the session and its call
        slog.exception("audiohook_end_failed")
    opener.ended(outcome)
    slog.info("audiohook_session_ended", outcome=outcome, audio_bytes=session.audio_bytes,
              pongs=session.pong_count, position_drift_max=session.position_drift_max)
    return outcome
