"""`vbgw nice-sim`: a client of the NICE CXone audio relay that behaves like CXone's Agent Assist
Hub (the Custom Agent Assist Endpoint app), for testing, load and probing a gateway.

Per contact it opens one WebSocket per stream perspective (TX = the contact, RX = the agent, or
one MIX), each with the business unit's API key (in the configured header, `Authorization:
Bearer` or `?token=`), sends the initial message (streamPerspective, contactId, agentId,
scriptParams as a JSON string, as Studio's Script Parameters snippet makes it), waits for the
acknowledgement, then sends the call's audio as raw G.711 mu-law binary messages of 20 ms
(160 bytes; NICE relays telephony audio as it arrives) paced in real time, and ends by closing
the sockets (as CXone does), with a `stop` event or with an empty message (`end`). A hold
closes every socket of the contact and the resume opens new ones with the identical initial
message, as NICE documents.

It checks what the gateway answers (the ack names the perspective and contact; an in-band end
is answered `{"status": "ended"}` and a normal close; an error is `{"status": "error",
"error": {"code", "message"}}` and a close code) and reports each violation. Fault injection
(`faults`) makes it misbehave on purpose. With a session token for the contact (made from a PAT,
as a Studio REST API action makes it from POST /api/token/, and passed in the script parameters
as `vbgwToken`), it follows the call on Socket.IO as the agent panel does and reports the
statuses and verification results the agent would see; then it reads each contact's
verification back from the REST API (tools/sim_support.py, as `vbgw audiohook-sim` does).

The wire format is the gateway's (connectors/nice.py; docs/nice-cxone.md), itself NICE's
documented format with the undocumented parts inferred; nothing here imports the gateway's
server side."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.protocol import State

from connectors.codecs import FILE_RATES, encode_mulaw, read_wav_8k, wav_info
from tools.sim_support import load_files, staggered, verification_lines
from tools.wsframes import FramePacer, client_frames

PERSPECTIVES = ("TX", "RX", "MIX")
OVERSIZED_BYTES = 70000
CLOSE_NORMAL = 1000


def new_contact_id() -> str:
    """A CXone-like master contact id (a large decimal number)."""
    return str(random.SystemRandom().randrange(10 ** 11, 10 ** 12))


@dataclass
class SimOptions:
    uri: str                                  # the Audio Relay Endpoint, ws(s)://host/nice/ws
    api_key: str | None
    header: str = "X-Api-Key"                 # the CAAE app's header name (nice.header)
    carrier: str = "header"                   # header | bearer | query: where the key travels
    contact_id: str = field(default_factory=new_contact_id)
    perspectives: tuple[str, ...] | None = None   # None: TX and RX with agent audio, else TX alone
    script_params: dict[str, str] = field(default_factory=dict)
    agent_id: str = "vbgw-sim"
    business_unit: str | None = None
    frame_ms: int = 20
    speed: float = 1.0                        # 1 = real time; 0 = as fast as possible
    shape: str = "binary"                     # binary | media | audio: how audio travels
    end: str = "close"                        # close | stop | empty: how the call's sockets end
    hold_at_s: float | None = None            # hold (all sockets close) at this call position
    hold_for_s: float = 2.0
    probe: bool = False                       # one TX socket, no audio: is the endpoint usable?
    faults: frozenset[str] = frozenset()
    open_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    end_timeout_s: float = 15.0


@dataclass
class SocketReport:
    """One socket of a contact (a perspective, in one segment of the call between holds)."""
    perspective: str
    segment: int = 0                          # 0 before the first hold, 1 after it, ...
    http_status: int | None = None            # 101, or the refused upgrade's status
    ack: dict | None = None
    error: dict | None = None                 # the gateway's {"code", "message"}
    ended: bool = False                       # the gateway answered an in-band end
    close_code: int | None = None
    dropped: bool = False                     # cut on purpose (fault `drop`)
    frames_sent: int = 0
    audio_s: float = 0.0
    ack_latency_s: float | None = None
    connect_error: str | None = None          # why no WebSocket was opened, in an operator's words
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.http_status == 101 and self.ack is not None and self.error is None and not self.violations
                and (self.ended or self.dropped or self.close_code is not None))

    def summary(self) -> dict:
        return {"perspective": self.perspective, "segment": self.segment, "http_status": self.http_status,
                "ok": self.ok, "error": self.error, "ended": self.ended, "close_code": self.close_code,
                "dropped": self.dropped, "frames": self.frames_sent, "audio_s": round(self.audio_s, 2),
                "ack_ms": round(self.ack_latency_s * 1000, 1) if self.ack_latency_s is not None else None,
                "connect_error": self.connect_error, "violations": self.violations}


@dataclass
class ContactReport:
    contact_id: str
    label: str = ""
    sockets: list[SocketReport] = field(default_factory=list)
    holds: int = 0
    statuses: list[str] = field(default_factory=list)      # as the agent's panel got them
    results: list[dict] = field(default_factory=list)      # Socket.IO verification rows, in order
    follow_error: str | None = None                        # why the results could not be followed

    @property
    def ok(self) -> bool:
        return bool(self.sockets) and all(s.ok for s in self.sockets)

    @property
    def connect_error(self) -> str | None:
        return next((s.connect_error for s in self.sockets if s.connect_error), None)

    @property
    def frames_sent(self) -> int:
        return sum(s.frames_sent for s in self.sockets)

    def final_results(self) -> list[dict]:
        """The last scored row of each user (the call's outcome as the agent last saw it)."""
        last: dict[str, dict] = {}
        for r in self.results:
            if r.get("bioResult") not in (None, "") and r.get("limitType") != "STARTING":
                last[str(r.get("bioUserId"))] = r
        return list(last.values())

    def summary(self) -> dict:
        return {"contact_id": self.contact_id, "file": self.label, "ok": self.ok, "holds": self.holds,
                "sockets": [s.summary() for s in self.sockets], "statuses": self.statuses,
                "results": self.final_results(), "follow_error": self.follow_error}


def refusal(status: int, o: SimOptions) -> str:
    """What an operator should check when the gateway refuses the upgrade with `status`."""
    path = urlsplit(o.uri).path or "/"
    return {
        401: f"401 Unauthorized: the API key was refused (check --api-key and --header {o.header} against the "
             "api_key= and header= lines of `vbgw nice add-bu`; a revoked or rotated key is refused; "
             "`vbgw nice list` shows the business units)",
        400: "400 Bad Request: the gateway refused the upgrade request",
        404: f"404 Not Found: no NICE endpoint at {path} (the gateway's nice.path, by default /nice/ws; "
             "check nice.enabled)",
        429: "429 Too Many Requests: the gateway's connection limits refused the socket",
        503: "503 Service Unavailable: the gateway is not ready or is shutting down",
    }.get(status, f"HTTP {status}: the gateway refused the WebSocket upgrade")


def _connection_failure(exc: BaseException, uri: str) -> str:
    import ssl

    from gateway.cli.client import connection_failure
    where = urlsplit(uri).netloc or uri
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"cannot connect to {where}: its TLS certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return (f"cannot connect to {where}: the TLS handshake failed ({exc.reason}): does the gateway serve TLS "
                "there? (ws:// for a gateway without TLS, wss:// with it)")
    return connection_failure(exc, uri)


PER_MESSAGE_FAULTS = frozenset({"oversized_frame", "bad_base64"})
PACER = FramePacer()                    # one per process: every socket's real-time audio (tools/wsframes.py)


class _Socket:
    """One CXone socket: connect, initial message, audio, end."""

    def __init__(self, o: SimOptions, perspective: str, payload: bytes, segment: int, end: str,
                 cut_at: int | None = None):
        self.o = o
        self.payload = payload
        self.end = end                       # stop | close | empty | drop
        self.cut_at = cut_at                 # with end == "drop": bytes sent before the cut
        self.r = SocketReport(perspective, segment)
        self.ws: Any = None

    def violation(self, text: str) -> None:
        self.r.violations.append(text)

    def connect_args(self) -> tuple[str, dict[str, str]]:
        o = self.o
        key = o.api_key or ""
        if "wrong_key" in o.faults:
            key = os.urandom(32).hex()
        uri, headers = o.uri, {"User-Agent": "vbgw-nice-sim (CXone CAAE audio relay)"}
        if "no_key" in o.faults or not key:
            return uri, headers
        if o.carrier == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif o.carrier == "query":
            uri += ("&" if "?" in uri else "?") + f"token={key}"
        else:
            headers[o.header] = key
        return uri, headers

    def initial_message(self) -> str | bytes:
        o = self.o
        if "audio_before_handshake" in o.faults:
            return b"\xff" * 160
        if "bad_handshake" in o.faults:
            return "{not json"
        msg: dict[str, Any] = {"streamPerspective": "XX" if "bad_perspective" in o.faults else self.r.perspective,
                               "contactId": o.contact_id, "agentId": o.agent_id,
                               "scriptParams": json.dumps(o.script_params)}
        if o.business_unit:
            msg["businessUnit"] = o.business_unit
        if "no_contact_id" in o.faults:
            del msg["contactId"]
        return json.dumps(msg)

    async def run(self) -> SocketReport:
        o = self.o
        uri, headers = self.connect_args()
        try:
            self.ws = await websockets.connect(uri, additional_headers=headers, max_size=2 ** 20, compression=None,
                                               open_timeout=o.open_timeout_s, ping_interval=None)
        except websockets.InvalidStatus as exc:
            self.r.http_status = exc.response.status_code
            self.r.connect_error = refusal(exc.response.status_code, o)
            return self.r
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            self.r.connect_error = _connection_failure(exc, o.uri)
            return self.r
        self.r.http_status = 101
        try:
            await self._session()
        except websockets.ConnectionClosed:
            self.r.close_code = self.ws.close_code
            if self.r.ack is not None and self.r.error is None and not self.r.dropped and not self.r.ended:
                await self._unexpected()                # the gateway's error, if it said why
                if self.r.error is None:
                    self.violation(f"the gateway closed the socket (code {self.ws.close_code}) while audio was sent")
        finally:
            if not self.r.dropped:
                await self.ws.close()
                self.r.close_code = self.r.close_code or self.ws.close_code
        return self.r

    async def _session(self) -> None:
        o = self.o
        t0 = time.monotonic()
        await self.ws.send(self.initial_message())
        first = await self._receive(o.ack_timeout_s, "the acknowledgement of the initial message")
        if first is None:
            return
        self.r.ack_latency_s = time.monotonic() - t0
        if first.get("status") == "error":
            await self._error(first)
            return
        if first.get("status") != "ok":
            self.violation(f"the acknowledgement is not {{\"status\": \"ok\"}}: {json.dumps(first)[:200]}")
            return
        self.r.ack = first
        if first.get("streamPerspective") != self.r.perspective:
            self.violation(f"ack streamPerspective {first.get('streamPerspective')!r} is not {self.r.perspective!r}")
        if str(first.get("contactId")) != o.contact_id:
            self.violation(f"ack contactId {first.get('contactId')!r} is not {o.contact_id!r}")
        if o.probe:
            self.end = "stop"
        elif not await self._stream_audio():
            return
        if self.end == "drop":
            self.ws.transport.abort()
            self.r.dropped = True
            return
        await self._unexpected()
        if self.r.error is not None:
            return
        if self.end == "close":
            await self.ws.close(CLOSE_NORMAL)
            self.r.close_code = self.ws.close_code
            return
        await self.ws.send(json.dumps({"event": "stop"}) if self.end == "stop" else b"")
        answer = await self._receive(o.end_timeout_s, "the answer to the end of the stream")
        if answer is None:
            return
        if answer.get("status") == "error":
            await self._error(answer)
            return
        if answer != {"status": "ended", "contactId": o.contact_id}:
            self.violation(f"expected {{\"status\": \"ended\", \"contactId\": ...}}, got {json.dumps(answer)[:200]}")
        self.r.ended = True
        await self._await_close(CLOSE_NORMAL)

    async def _unexpected(self) -> None:
        """While audio flows the gateway has nothing to say: what it sent meanwhile (already
        received) is its error, or a violation."""
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), 0.01)
            except (asyncio.TimeoutError, websockets.ConnectionClosed):
                return
            try:
                msg = json.loads(raw)
            except (TypeError, ValueError):
                msg = None
            if isinstance(msg, dict) and msg.get("status") == "error" and self.r.error is None:
                await self._error(msg)
                return
            self.violation(f"unexpected message while audio was sent: {str(raw)[:200]}")

    async def _receive(self, timeout: float, what: str) -> dict | None:
        """The gateway's next message as a JSON object (None, with a violation, otherwise)."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            self.violation(f"no {what} within {timeout:g} s")
            return None
        except websockets.ConnectionClosed:
            self.r.close_code = self.ws.close_code
            self.violation(f"the gateway closed the socket (code {self.ws.close_code}) before {what}")
            return None
        if isinstance(raw, bytes):
            self.violation("the gateway sent a binary message")
            return None
        try:
            msg = json.loads(raw)
        except ValueError:
            self.violation(f"the gateway sent text that is not JSON: {raw[:120]!r}")
            return None
        if not isinstance(msg, dict):
            self.violation(f"the gateway sent JSON that is not an object: {raw[:120]!r}")
            return None
        return msg

    async def _error(self, msg: dict) -> None:
        err = msg.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
            self.violation(f"malformed error message: {json.dumps(msg)[:200]}")
            err = {"code": "?", "message": json.dumps(msg)[:200]}
        self.r.error = {"code": err["code"], "message": err["message"]}
        await self._await_close(None)
        if self.r.close_code == CLOSE_NORMAL:
            self.violation(f"error {err['code']} closed the socket with 1000 (normal), not an error code")

    async def _await_close(self, expected: int | None) -> None:
        try:
            await asyncio.wait_for(self.ws.wait_closed(), self.o.end_timeout_s)
        except asyncio.TimeoutError:
            self.violation(f"the gateway did not close the socket within {self.o.end_timeout_s:g} s")
            return
        self.r.close_code = self.ws.close_code
        if expected is not None and self.r.close_code != expected:
            self.violation(f"closed with code {self.r.close_code}, expected {expected}")

    async def _stream_audio(self) -> bool:
        """The payload in frame_ms messages, paced; False when the socket ended meanwhile."""
        o = self.o
        step = max(1, 8 * o.frame_ms)                        # mu-law: 8 bytes per ms
        total = len(self.payload) if self.end != "drop" else min(len(self.payload), self.cut_at or 0)
        if o.shape == "binary" and o.speed and not (o.faults & PER_MESSAGE_FAULTS):
            return await self._stream_paced(total, step)
        t0 = time.monotonic()
        pos = 0
        while pos < total:
            frame = self.payload[pos:pos + step]
            if not frame:
                break
            n = self.r.frames_sent
            if "oversized_frame" in o.faults and n == 2:
                frame = b"\xff" * OVERSIZED_BYTES
            if "bad_base64" in o.faults and n == 2:
                await self.ws.send(json.dumps({"event": "media", "media": {"payload": "not base64!"}}))
            elif o.shape == "media":
                await self.ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(frame).decode()}}))
            elif o.shape == "audio":
                await self.ws.send(json.dumps({"audio": base64.b64encode(frame).decode()}))
            else:
                await self.ws.send(frame)
            self.r.frames_sent += 1
            pos += step
            self.r.audio_s += min(step, len(frame)) / 8000
            if o.speed:
                delay = t0 + pos / 8000 / o.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            if self.ws.close_code is not None or (("oversized_frame" in o.faults or "bad_base64" in o.faults)
                                                  and n == 2):
                # The gateway answers a bad message with an error and a close: read it.
                msg = await self._receive(o.end_timeout_s, "the answer to the bad audio message")
                if msg is not None and msg.get("status") == "error":
                    await self._error(msg)
                elif msg is not None:
                    self.violation(f"a bad audio message was answered {json.dumps(msg)[:200]}")
                return False
        return True

    async def _stream_paced(self, total: int, step: int) -> bool:
        """Real-time binary audio, as `_stream_audio` sends it, through the process's pacer:
        the same frames at the same times for a fraction of the client's CPU (a load client
        shares the machine with the gateway it measures)."""
        frames = client_frames(self.payload[:total], step)
        ws = self.ws
        sent = await PACER.send(ws.transport, frames, step / 8000 / self.o.speed,
                                closed=lambda: ws.protocol.state is not State.OPEN or ws.transport.is_closing())
        self.r.frames_sent += sent
        self.r.audio_s += min(total, sent * step) / 8000
        if sent < len(frames):
            # the connection closed under the audio: what ws.send would have raised
            await self.ws.wait_closed()
            raise self.ws.protocol.close_exc
        return self.ws.close_code is None


class Follower:
    """The agent's panel: a Socket.IO client following the contact with its session token
    (`status`: the call's statuses and every result of its verification, the automatic one
    included), recording statuses and verification rows."""

    def __init__(self, base: str, token: str):
        self.base, self.token = base, token
        self.statuses: list[str] = []
        self.rows: list[dict] = []
        self.changed = asyncio.Event()
        self.sio: Any = None

    async def start(self) -> None:
        import socketio

        from gateway.web.socketio import NAMESPACE, PATH
        self.sio = socketio.AsyncClient(reconnection=False)

        @self.sio.on(f"status-{self.token}", namespace=NAMESPACE)
        async def on_status(data):
            if isinstance(data, dict) and isinstance(data.get("status"), str):
                self.statuses.append(data["status"] + (f" ({data['reason']})" if data.get("reason") else ""))
                self.changed.set()

        @self.sio.on(f"verification-{self.token}", namespace=NAMESPACE)
        async def on_verification(data):
            self.rows += [r for r in (data if isinstance(data, list) else [data]) if isinstance(r, dict)]
            self.changed.set()

        await self.sio.connect(self.base, socketio_path=PATH, namespaces=[NAMESPACE], transports=["websocket"],
                               wait_timeout=10)
        ack = await self.sio.call("status", {"token": self.token, "users": "", "time": ""}, namespace=NAMESPACE,
                                  timeout=10)
        if ack != {"ok": True}:
            err = (ack or {}).get("error") or {}
            raise RuntimeError(f"Socket.IO status refused: {err.get('code')}: {err.get('message')}")

    def closed(self) -> bool:
        return any(s.startswith(("CALL_CLOSED", "SYSTEM_ERROR", "ERR_CODE")) for s in self.statuses)

    async def until_closed(self, timeout: float) -> None:
        async def loop():
            while not self.closed():
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            pass

    async def stop(self) -> None:
        if self.sio is not None:
            await self.sio.disconnect()


def _segments(n_samples: int, o: SimOptions) -> list[tuple[int, int]]:
    """The call's audio in the pieces between holds (sample indexes)."""
    if o.hold_at_s is None or o.probe:
        return [(0, n_samples)]
    cut = min(n_samples, max(0, int(o.hold_at_s * 8000)))
    return [(0, cut), (cut, n_samples)]


async def _perspective(o: SimOptions, perspective: str, payload: bytes, segment: int, end: str) -> list[SocketReport]:
    """One perspective's socket for a segment; with fault `drop`, TX is cut halfway and a
    new socket with the same initial message sends the rest (CXone's recovery)."""
    if "drop" in o.faults and perspective in ("TX", "MIX") and segment == 0 and not o.probe and len(payload) > 320:
        half = len(payload) // 2 // 160 * 160
        first = await _Socket(o, perspective, payload, segment, "drop", cut_at=half).run()
        if not first.dropped:
            return [first]
        rest = await _Socket(o, perspective, payload[half:], segment, end).run()
        return [first, rest]
    return [await _Socket(o, perspective, payload, segment, end).run()]


async def run_contact(o: SimOptions, tx: np.ndarray, rx: np.ndarray | None = None, label: str = "",
                      follower: Follower | None = None, results_wait_s: float = 10.0) -> ContactReport:
    """One simulated CXone contact; never raises for gateway misbehaviour (see the report).
    `tx` is the contact's audio (the customer); `rx` the agent's (None: no agent audio, so no
    RX socket unless `o.perspectives` asks for one, which then carries silence); a MIX socket
    carries their sum."""
    report = ContactReport(o.contact_id, label)
    rx_missing = rx is None
    n = max(len(tx), len(rx) if rx is not None else 0)
    tx = np.pad(tx, (0, n - len(tx)))
    rx = np.zeros(n, np.int16) if rx is None else np.pad(rx, (0, n - len(rx)))
    mix = np.clip(tx.astype(np.int32) + rx, -32768, 32767).astype(np.int16)
    audio = {"TX": tx, "RX": rx, "MIX": mix}
    perspectives = ("TX",) if o.probe else o.perspectives or (("TX",) if rx_missing else ("TX", "RX"))
    if follower is not None:
        try:
            await follower.start()
        except Exception as exc:  # noqa: BLE001 - reported, the call still runs
            report.follow_error = f"cannot follow the results: {exc}"
            follower = None
    try:
        segments = _segments(n, o)
        for k, (a, b) in enumerate(segments):
            if k:
                report.holds += 1
                await asyncio.sleep(o.hold_for_s / o.speed if o.speed else 0.2)
            end = o.end if k == len(segments) - 1 else "close"
            payloads = {p: b"" if o.probe else encode_mulaw(audio[p][a:b]) for p in perspectives}
            parts = await asyncio.gather(*(_perspective(o, p, payloads[p], k, end) for p in perspectives))
            report.sockets += [s for part in parts for s in part]
            if not all(s.ok for s in report.sockets):
                break                        # a refused socket: no resume after it
        if follower is not None:
            if report.ok and o.end in ("stop", "empty") and not o.probe:
                await follower.until_closed(results_wait_s)
            else:
                await asyncio.sleep(min(results_wait_s, 2.0))
    finally:
        if follower is not None:
            report.statuses, report.results = list(follower.statuses), list(follower.rows)
            await follower.stop()
    return report


def load_call(path: Path, customer_channel: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """A WAV file as (contact, agent), decoded by the gateway's own decoder (connectors.codecs).
    Mono: the contact alone. Stereo: a NICE recording, the contact on `customer_channel`
    (default 1, the right: recordings.channel_maps.NICE_IN_CONTACT puts the agent left), the
    agent on the other."""
    data = path.read_bytes()
    if wav_info(data, FILE_RATES).channels < 2:
        return read_wav_8k(data), None
    return read_wav_8k(data, channel=customer_channel), read_wav_8k(data, channel=1 - customer_channel)


async def _session_token(http, base: str, args, contact_id: str) -> str:
    from gateway.cli.client import create_token
    # A Studio REST API action gets the token for the contact (masterId = the contact id).
    return await create_token(http, base, args.pat, contact_id, args.tenant, args.profile, args.ani or None,
                              provider="NICE_IN_CONTACT")


def _describe(row: dict) -> str:
    """A Socket.IO verification row as `vbgw stream` prints an SSE row."""
    from gateway.cli.client import describe
    line = describe({"bio_user_id": row.get("bioUserId"), "bio_result": row.get("bioResult"),
                     "bio_score": row.get("bioScore"), "llr": row.get("llr"), "result_type": row.get("limitType"),
                     "speech_millis": row.get("speechMillis") or 0})
    return line + (" [mixed: the contact's audio includes the agent's]" if row.get("mixed") else "")


def _params(args) -> dict[str, str]:
    """The script parameters: --script-params, then --ani as Ani, then each --param."""
    sp = args.script_params
    if sp is not None and not isinstance(sp, dict):
        raise ValueError("--script-params must be a JSON object, e.g. '{\"user_id\": \"cust-1\"}'")
    params = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (sp or {}).items()}
    if args.ani:
        params["Ani"] = args.ani
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r}: expected KEY=VALUE (a script parameter, e.g. user_id=cust-1)")
        params[key.strip()] = value
    return params


def _perspectives(args) -> tuple[str, ...] | None:
    if args.mix:
        return ("MIX",)
    if not args.perspectives:
        return None
    chosen = tuple(p.strip().upper() for p in args.perspectives.split(",") if p.strip())
    if not chosen or any(p not in PERSPECTIVES for p in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"--perspectives takes TX, RX and MIX separated by commas, got {args.perspectives!r}")
    return chosen


async def _run(args, calls: list[tuple[np.ndarray, np.ndarray | None]], labels: list[str]) -> list[ContactReport]:
    import aiohttp

    from gateway.cli.client import ClientError, http_base
    params = _params(args)
    perspectives = _perspectives(args)
    n = 1 if args.probe else args.calls or max(1, len(calls))
    base = http_base(args.uri)

    async def one(i: int, http) -> ContactReport:
        contact = new_contact_id()
        if args.contact_id:
            contact = args.contact_id if n == 1 else f"{args.contact_id}-{i + 1}"
        o = SimOptions(uri=args.uri, api_key=args.api_key, header=args.header, carrier=args.auth,
                       contact_id=contact, perspectives=perspectives, script_params=dict(params),
                       business_unit=args.bu_id, frame_ms=args.frame_ms, speed=0 if args.fast else args.speed,
                       shape=args.shape, end=args.end, hold_at_s=args.hold_at, hold_for_s=args.hold_for,
                       probe=args.probe, faults=frozenset(args.fault))
        follower, token_error = None, None
        if args.pat and not args.probe:
            try:
                token = await _session_token(http, base, args, contact)
                o.script_params["vbgwToken"] = token            # as the Studio script passes it to the panel
                follower = Follower(base, token)
            except (ClientError, aiohttp.ClientError) as exc:
                token_error = f"cannot follow the results: no session token: {exc}"
        tx, rx = calls[i % len(calls)]
        report = await run_contact(o, tx, rx, labels[i % len(labels)] if labels else "", follower, args.results_wait)
        report.follow_error = report.follow_error or token_error
        return report

    async with aiohttp.ClientSession() as http:
        return await staggered(lambda i: one(i, http), n, args.rate)


async def _outcomes(args, reports: list[ContactReport]) -> list[str]:
    """Each contact's verification, read back from the REST API with a session token for it: the
    users of --users, else the caller's number (the automatic verification's fallback user id)."""
    from gateway.web.audiohook import normalize_ani
    users = [u.strip() for u in (args.users or "").split(",") if u.strip()] or \
        ([normalize_ani(args.ani)] if args.ani else [])
    if not users:
        return ["verification: no users to read back (give --users or --ani)"]
    contacts = [r.contact_id for r in reports if not r.connect_error]
    return await verification_lines(args.uri, args.pat, args.tenant, args.profile, users, contacts, "contact")


def _print_report(r: ContactReport) -> None:
    def side(p: str) -> str:
        socks = [s for s in r.sockets if s.perspective == p]
        return (f"{p} {len(socks)} socket{'s' * (len(socks) != 1)} {sum(s.audio_s for s in socks):.1f} s "
                f"{sum(s.frames_sent for s in socks)} frames")
    sides = "; ".join(side(p) for p in dict.fromkeys(s.perspective for s in r.sockets))
    holds = f"; {r.holds} hold{'s' * (r.holds != 1)}" if r.holds else ""
    name = f" ({r.label})" if r.label else ""
    print(f"contact {r.contact_id}{name}: {'ok' if r.ok else 'FAILED'} ({sides}{holds})")
    for s in r.sockets:
        if s.connect_error:
            print(f"  {s.perspective}: not connected: {s.connect_error}")
        elif s.error:
            print(f"  {s.perspective}: the gateway refused: {s.error['code']}: {s.error['message']} "
                  f"(close {s.close_code})")
        for v in s.violations:
            print(f"  {s.perspective}: violation: {v}")
    if r.follow_error:
        print(f"  {r.follow_error}")
    if r.statuses:
        print(f"  status: {', '.join(r.statuses)}")
    for row in r.results:
        print(f"  verification: {_describe(row)}")
    for row in r.final_results():
        print(f"  result: {_describe(row)}")
    if r.ok and r.statuses and not r.statuses[-1].startswith("CALL_CLOSED"):
        print("  (the call is still open: after a close the gateway waits nice.resume_idle_s for a resume)")


def main(args) -> int:
    if not args.files and not args.probe:
        print("vbgw nice-sim: give at least one FILE.wav (or --probe)", file=sys.stderr)
        return 2
    if args.pat and not (args.tenant and args.profile):
        print("vbgw nice-sim: --pat needs --tenant and --profile (to make each contact's session token)",
              file=sys.stderr)
        return 2
    if not args.api_key and "no_key" not in args.fault:
        print("vbgw nice-sim: give --api-key (the api_key= line of `vbgw nice add-bu`)", file=sys.stderr)
        return 2
    from gateway.cli.client import ClientError, http_base
    try:
        _params(args)
        _perspectives(args)
        http_base(args.uri)                      # a URL the tool can use
        calls = load_files(args.files, lambda f: load_call(f, args.customer_channel)) or \
            [(np.zeros(0, np.int16), None)]
    except (ValueError, ClientError) as exc:
        print(f"vbgw nice-sim: {exc}", file=sys.stderr)
        return 2
    labels = [f.name for f in args.files]
    reports = asyncio.run(_run(args, calls, labels))
    if args.probe:
        return _probe_answer(args, reports[0])
    for r in reports:
        if args.json:
            print(json.dumps(r.summary()))
        else:
            _print_report(r)
    bad = sum(not r.ok for r in reports)
    acks = sorted(s.ack_latency_s for r in reports for s in r.sockets if s.ack_latency_s is not None)
    if acks and not args.json:
        print(f"ack latency: p50 {acks[len(acks) // 2] * 1000:.1f} ms, max {acks[-1] * 1000:.1f} ms")
    refused = sum(r.connect_error is not None for r in reports)
    violations = sum(len(s.violations) for r in reports for s in r.sockets)
    print(f"{len(reports) - bad}/{len(reports)} contacts ok, {violations} protocol violations"
          + (f", {refused} not connected" if refused else ""))
    if args.pat:
        for line in asyncio.run(_outcomes(args, reports)):
            print(line)
    elif not args.json and refused < len(reports):
        print("(add --pat PAT --tenant T --profile P [--users U] to see each contact's results as its agent panel "
              "does)")
    if refused == len(reports):
        print(f"vbgw nice-sim: {reports[0].connect_error}", file=sys.stderr)
    return 1 if bad else 0


def _probe_answer(args, r: ContactReport) -> int:
    """One line for an admin: is the endpoint reachable, is the key accepted, does the gateway
    speak the protocol?"""
    s = r.sockets[0]
    if args.json:
        print(json.dumps(r.summary()))
    if s.connect_error:
        print(f"vbgw nice-sim: probe failed: {s.connect_error}", file=sys.stderr)
        return 1
    if s.error:
        print(f"vbgw nice-sim: probe failed: the gateway refused the initial message: {s.error['code']}: "
              f"{s.error['message']}", file=sys.stderr)
        return 1
    if not s.ok:
        print(f"vbgw nice-sim: probe failed: {'; '.join(s.violations) or 'the socket did not end cleanly'}",
              file=sys.stderr)
        return 1
    print(f"probe ok: {args.uri} accepted the API key ({'header ' + args.header if args.auth == 'header' else args.auth}) "
          f"and acknowledged the initial message in {(s.ack_latency_s or 0) * 1000:.0f} ms "
          f"(contact {r.contact_id}, ended with a stop event)")
    return 0
