"""`vbgw audiohook-sim`: an AudioHook Monitor client that behaves like Genesys Cloud.

Upgrade headers and HTTP message signature, `open` offering stereo and mono PCMU, 200 ms audio
frames paced in real time (or faster), pings every 5 s carrying the last rtt, optional pause /
resume and discard, then `close` and wait for `closed`. It checks everything the server sends
(sequence numbers, pong clientseq, the selected media being one of the offers verbatim, message
size, timeouts, no binary) and reports each violation. Fault injection (`faults`) lets the tests
make it misbehave on purpose. Timings follow the Genesys reference client: open 5 s, close 10 s,
first ping 1 s after `opened`, then every 5 s; a ping still unanswered when the next is due is a
missing pong (error 408, close)."""
from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import websockets
from pydantic import ValidationError

from connectors.audiohook import MAX_MESSAGE_CHARS, ServerEnvelope, format_duration
from connectors.audiohook_signature import authority_of, new_nonce, sign
from connectors.codecs import FILE_RATES, encode_mulaw, read_wav_8k, wav_info
from tools.sim_support import load_files, staggered, verification_lines

STEREO_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
MONO_PCMU = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
DEFAULT_OFFERS = [STEREO_PCMU, MONO_PCMU]
NULL_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass
class SimOptions:
    uri: str
    api_key: str
    client_secret: str | None
    org_id: str
    conversation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    ani: str = ""
    ani_name: str = ""
    custom_config: dict | None = None
    supported_languages: bool = False     # ask for the server's languages in `open`
    offers: list[dict] = field(default_factory=lambda: [dict(o) for o in DEFAULT_OFFERS])
    frame_ms: int = 200
    speed: float = 1.0                    # 1 = real time; 0 = as fast as possible
    ping_interval_s: float = 5.0
    initial_ping_delay_s: float = 1.0
    pause_at_s: float | None = None       # client-initiated pause at this stream position
    pause_for_s: float = 2.0
    discard_at_s: float | None = None     # skip audio at this position and send `discarded`
    discard_s: float = 1.0
    probe: bool = False
    update_language: str | None = None    # send `update {language}` after `opened`
    open_timeout_s: float = 5.0
    close_timeout_s: float = 10.0
    faults: frozenset[str] = frozenset()
    nonce: str | None = None              # fixed nonce / created: replay tests
    created: int | None = None


@dataclass
class SimReport:
    session_id: str
    conversation_id: str
    http_status: int | None = None        # 101, or the rejection status
    opened: dict | None = None            # parameters of `opened`
    closed: bool = False
    disconnect: dict | None = None        # parameters of a server `disconnect`
    violations: list[str] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    frames_sent: int = 0
    audio_s: float = 0.0
    open_latency_s: float | None = None
    close_latency_s: float | None = None
    connect_error: str | None = None      # why no WebSocket was opened, in an operator's words

    @property
    def ok(self) -> bool:
        return self.http_status == 101 and self.closed and not self.violations and self.disconnect is None

    def summary(self) -> dict:
        return {"session_id": self.session_id, "conversation_id": self.conversation_id,
                "http_status": self.http_status, "closed": self.closed, "disconnect": self.disconnect,
                "media": (self.opened or {}).get("media"), "violations": self.violations,
                "pongs": len(self.rtts), "rtt_max_ms": round(max(self.rtts) * 1000, 1) if self.rtts else None,
                "frames": self.frames_sent, "audio_s": round(self.audio_s, 2), "connect_error": self.connect_error}


def encode_audio(external: np.ndarray, internal: np.ndarray | None, media: dict) -> bytes:
    """The whole call in the selected format, interleaved in the selected channel order."""
    internal = np.zeros_like(external) if internal is None else internal
    n = max(len(external), len(internal))
    chans = {"external": np.pad(external, (0, n - len(external))),
             "internal": np.pad(internal, (0, n - len(internal)))}
    stacked = np.stack([chans[c] for c in media["channels"]], axis=1).astype("<i2").reshape(-1)
    if media["format"] == "PCMU":
        return encode_mulaw(stacked)
    return stacked.tobytes()


class _Client:
    def __init__(self, opts: SimOptions, external: np.ndarray, internal: np.ndarray | None):
        self.o = opts
        self.external = external
        self.internal = internal
        self.r = SimReport(opts.session_id, NULL_UUID if opts.probe else opts.conversation_id)
        self.seq = 0
        self.server_seq = 0
        self.state = "PREPARING"
        self.position = 0                 # samples per channel sent or skipped
        self.ping_seq: int | None = None
        self.ping_sent = 0.0
        self.lock = asyncio.Lock()
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self.stop = asyncio.Event()       # disconnect received / error: stop streaming
        self.ws: Any = None

    def violation(self, text: str) -> None:
        self.r.violations.append(text)

    # -- upgrade ---------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        o = self.o
        u = urlsplit(o.uri)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        h = {"Audiohook-Organization-Id": o.org_id, "Audiohook-Correlation-Id": o.correlation_id,
             "Audiohook-Session-Id": o.session_id, "X-API-KEY": o.api_key,
             "User-Agent": "GenesysCloud-AudioHook-Client (vbgw-sim)"}
        if o.client_secret and "no_signature" not in o.faults:
            secret = o.client_secret
            if "bad_signature" in o.faults:
                import base64
                import os
                secret = base64.b64encode(os.urandom(32)).decode()
            created = o.created if o.created is not None else int(time.time())
            if "stale_signature" in o.faults:
                created -= 60
            h.update(sign(request_target=target, authority=authority_of(u.netloc, u.scheme in ("wss", "https")),
                          org_id=o.org_id, session_id=o.session_id, correlation_id=o.correlation_id,
                          api_key=o.api_key, client_secret=secret, created=created, nonce=o.nonce or new_nonce()))
        return h

    # -- sending ---------------------------------------------------------------------------------
    async def send(self, type_: str, parameters: dict, seq_skip: int = 0, serverseq: int | None = None) -> int:
        async with self.lock:
            self.seq += 1 + seq_skip
            msg = {"version": "2", "id": self.o.session_id, "type": type_, "seq": self.seq,
                   "serverseq": self.server_seq if serverseq is None else serverseq,
                   "position": format_duration(self.position / 8000), "parameters": parameters}
            await self.ws.send(json.dumps(msg))
            return self.seq

    async def send_audio(self, payload: bytes) -> None:
        async with self.lock:
            await self.ws.send(payload)
        self.r.frames_sent += 1

    # -- receiving -------------------------------------------------------------------------------
    async def reader(self) -> None:
        try:
            async for raw in self.ws:
                self.on_message(raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.stop.set()

    def on_message(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self.violation("server sent a binary message")
            return
        if len(raw) > MAX_MESSAGE_CHARS:
            self.violation(f"server message of {len(raw)} characters exceeds 65535")
        try:
            msg = json.loads(raw)
            env = ServerEnvelope.model_validate(msg)
        except (ValueError, ValidationError) as exc:
            self.violation(f"malformed server message: {str(exc).splitlines()[0][:200]}")
            return
        self.r.messages.append(msg)
        if env.id != self.o.session_id:
            self.violation(f"{env.type}: id {env.id} is not the session id")
        if env.seq != self.server_seq + 1:
            self.violation(f"{env.type}: seq={env.seq}, expected {self.server_seq + 1}")
        self.server_seq = env.seq
        if env.clientseq > self.seq:
            self.violation(f"{env.type}: clientseq={env.clientseq} ahead of the client's seq={self.seq}")
        getattr(self, "on_" + env.type)(env)

    def on_opened(self, env: ServerEnvelope) -> None:
        if self.state != "OPENING":
            self.violation(f"unexpected 'opened' in state {self.state}")
            return
        media = env.parameters.get("media")
        if not isinstance(media, list) or len(media) > 1:
            self.violation("opened: media must be a list of at most one entry")
        elif media and media[0] not in self.o.offers:
            self.violation(f"opened: selected media {media[0]} is not one of the offers")
        if self.o.supported_languages and not isinstance(env.parameters.get("supportedLanguages"), list):
            self.violation("opened: supportedLanguages was asked for but is not a list")
        self.r.opened = env.parameters
        self.state = "ACTIVE"
        self.opened.set()

    def on_pong(self, env: ServerEnvelope) -> None:
        if self.ping_seq is None:
            self.violation("unexpected 'pong' (no outstanding 'ping')")
            return
        if env.clientseq != self.ping_seq:
            self.violation(f"pong clientseq={env.clientseq} does not match ping seq={self.ping_seq}")
        self.r.rtts.append(time.monotonic() - self.ping_sent)
        self.ping_seq = None

    def on_closed(self, env: ServerEnvelope) -> None:
        if self.state != "CLOSING":
            self.violation(f"unexpected 'closed' in state {self.state}")
        self.state = "CLOSED"
        self.r.closed = True
        self.closed.set()

    def on_disconnect(self, env: ServerEnvelope) -> None:
        self.r.disconnect = env.parameters
        self.stop.set()

    def on_pause(self, env: ServerEnvelope) -> None:
        asyncio.ensure_future(self._pause_requested())

    async def _pause_requested(self) -> None:
        if self.state in ("ACTIVE", "PAUSED"):
            self.state = "PAUSED"
            await self.send("paused", {})

    def on_resume(self, env: ServerEnvelope) -> None:
        asyncio.ensure_future(self._resume_requested())

    async def _resume_requested(self) -> None:
        if self.state == "PAUSED":
            self.state = "ACTIVE"
            await self.send("resumed", {"start": format_duration(self.position / 8000), "discarded": "PT0S"})

    def on_updated(self, env: ServerEnvelope) -> None:
        pass

    def on_reconnect(self, env: ServerEnvelope) -> None:
        pass

    def on_event(self, env: ServerEnvelope) -> None:
        entities = env.parameters.get("entities")
        if not isinstance(entities, list) or not entities:
            self.violation("event: entities must be a non-empty list")

    # -- the session -----------------------------------------------------------------------------
    async def pinger(self) -> None:
        await asyncio.sleep(self.o.initial_ping_delay_s)
        while not self.stop.is_set() and self.state in ("ACTIVE", "PAUSED"):
            if self.ping_seq is not None:
                self.violation(f"missing pong: no pong for ping seq={self.ping_seq} within "
                               f"{self.o.ping_interval_s:g} s")
                await self.send("error", {"code": 408, "message": "Timeout waiting for pong"})
                self.stop.set()
                return
            params = {"rtt": format_duration(self.r.rtts[-1])} if self.r.rtts else {}
            skip = 1 if "seq_gap" in self.o.faults and self.seq >= 1 else 0
            serverseq = self.server_seq + 5 if "bad_serverseq" in self.o.faults else None
            self.ping_sent = time.monotonic()
            self.ping_seq = await self.send("ping", params, seq_skip=skip, serverseq=serverseq)
            await asyncio.sleep(self.o.ping_interval_s)

    async def stream_audio(self) -> None:
        o = self.o
        media = self.r.opened["media"][0]
        payload = encode_audio(self.external, self.internal, media)
        spf = 8000 * o.frame_ms // 1000                       # samples per frame, per channel
        bpf = spf * len(media["channels"]) * (1 if media["format"] == "PCMU" else 2)
        total = len(payload) // (bpf // spf)
        t0 = time.monotonic()
        sent_s = 0.0
        pos = 0
        paused_done = discarded_done = False
        while pos < total and not self.stop.is_set():
            now_s = pos / 8000
            if o.discard_at_s is not None and not discarded_done and now_s >= o.discard_at_s:
                discarded_done = True
                skip = min(int(o.discard_s * 8000), total - pos)
                start = self.position
                pos += skip
                self.position += skip
                await self.send("discarded", {"start": format_duration(start / 8000),
                                              "discarded": format_duration(skip / 8000)})
                continue
            if o.pause_at_s is not None and not paused_done and now_s >= o.pause_at_s:
                paused_done = True
                self.state = "PAUSED"
                await self.send("paused", {})
                if o.speed:
                    await asyncio.sleep(o.pause_for_s / o.speed)
                sent_s += o.pause_for_s
                skip = min(int(o.pause_for_s * 8000), total - pos)
                start = self.position
                pos += skip
                self.position += skip
                self.state = "ACTIVE"
                await self.send("resumed", {"start": format_duration(start / 8000),
                                            "discarded": format_duration(skip / 8000)})
                continue
            n = min(spf, total - pos)
            frame = payload[pos * (bpf // spf):(pos + n) * (bpf // spf)]
            if "odd_frame" in o.faults and self.r.frames_sent == 2:
                frame += b"\x00"
            if "oversized_frame" in o.faults and self.r.frames_sent == 2:
                frame = b"\xff" * 70000
            await self.send_audio(frame)
            pos += n
            self.position += n
            self.r.audio_s += n / 8000
            sent_s += n / 8000
            if o.speed:
                delay = t0 + sent_s / o.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)

    async def run(self) -> SimReport:
        o = self.o
        try:
            self.ws = await websockets.connect(o.uri, additional_headers=self.headers(), max_size=2 ** 20,
                                               compression=None, open_timeout=10, ping_interval=None)
        except websockets.InvalidStatus as exc:
            self.r.http_status = exc.response.status_code
            self.r.connect_error = refusal(exc.response.status_code, o)
            return self.r
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as exc:
            from gateway.cli.client import connection_failure
            self.r.connect_error = connection_failure(exc, o.uri)
            self.violation(f"connection failed: {type(exc).__name__}: {exc}")
            return self.r
        self.r.http_status = 101
        reader = asyncio.create_task(self.reader())
        pinger: asyncio.Task | None = None
        try:
            if "audio_before_open" in o.faults:
                await self.send_audio(b"\xff" * 3200)
            self.state = "OPENING"
            conv = NULL_UUID if o.probe else o.conversation_id
            t_open = time.monotonic()
            await self.send("open", {
                "organizationId": str(uuid.uuid4()) if "wrong_org" in o.faults else o.org_id,
                "conversationId": conv,
                "participant": {"id": NULL_UUID if o.probe else str(uuid.uuid5(uuid.NAMESPACE_URL, conv)),
                                "ani": "" if o.probe else o.ani, "aniName": "" if o.probe else o.ani_name,
                                "dnis": ""},
                "media": o.offers, "language": "en-US",
                **({"supportedLanguages": True} if o.supported_languages else {}),
                **({"customConfig": o.custom_config} if o.custom_config is not None else {})})
            opened = asyncio.create_task(self.opened.wait())
            stopped = asyncio.create_task(self.stop.wait())
            await asyncio.wait({opened, stopped}, timeout=o.open_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            opened.cancel()
            stopped.cancel()
            if self.opened.is_set():
                self.r.open_latency_s = time.monotonic() - t_open
                if not o.probe and "no_pings" not in o.faults:
                    pinger = asyncio.create_task(self.pinger())
                if o.update_language:
                    await self.send("update", {"language": o.update_language})
                if "client_error" in o.faults:
                    await self.send("error", {"code": 500, "message": "Internal client error (injected)"})
                    self.stop.set()
                elif not o.probe and self.r.opened.get("media"):
                    await self.stream_audio()
            elif self.r.disconnect is None and not reader.done():
                self.violation(f"open transaction timeout: no 'opened' within {o.open_timeout_s:g} s")
            if "drop" in o.faults:
                self.ws.transport.abort()
                return self.r
            if reader.done():
                if not self.r.closed:
                    self.violation("server closed the connection without 'closed'")
                return self.r
            if pinger is not None:
                pinger.cancel()
            self.state = "CLOSING"
            reason = ("error" if self.r.violations or "client_error" in o.faults else
                      "disconnect" if self.r.disconnect is not None else "end")
            t_close = time.monotonic()
            await self.send("close", {"reason": reason})
            try:
                await asyncio.wait_for(self.closed.wait(), o.close_timeout_s)
                self.r.close_latency_s = time.monotonic() - t_close
            except asyncio.TimeoutError:
                if not self.r.closed:
                    self.violation(f"close transaction timeout: no 'closed' within {o.close_timeout_s:g} s")
        except websockets.ConnectionClosed:
            if not self.r.closed:
                self.violation("server closed the connection before 'closed'")
        finally:
            if pinger is not None:
                pinger.cancel()
            await self.ws.close()
            reader.cancel()
        return self.r


def refusal(status: int, o: SimOptions) -> str:
    """What an operator should check when the gateway refuses the upgrade with `status`."""
    path = urlsplit(o.uri).path or "/"
    return {
        401: "401 Unauthorized: the API key or the request signature was refused (check --api-key, "
             "--client-secret and --org-id against `vbgw audiohook list` / add-org's output; clocks within "
             "a few seconds)",
        400: "400 Bad Request: the upgrade headers were refused (organization and session ids must be UUIDs)",
        403: "403 Forbidden: AudioHook is turned off on this gateway (audiohook.enabled)",
        404: f"404 Not Found: no AudioHook endpoint at {path} (the gateway's audiohook.path, by default "
             "/audiohook/ws)",
    }.get(status, f"HTTP {status}: the gateway refused the WebSocket upgrade")


async def run_session(opts: SimOptions, external: np.ndarray, internal: np.ndarray | None = None) -> SimReport:
    """One simulated Genesys session; never raises for server misbehaviour (see the report)."""
    return await _Client(opts, external, internal).run()


async def run_load(make_opts, calls: list[tuple[np.ndarray, np.ndarray | None]], sessions: int,
                   rate: float) -> list[SimReport]:
    """`sessions` sessions started `rate` per second; make_opts(i) gives each one's options."""
    return await staggered(lambda i: run_session(make_opts(i), *calls[i % len(calls)]), sessions, rate)


def load_call(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A WAV file as (external, internal), decoded as the gateway decodes uploads: a stereo
    file's left channel is the customer (external), its right the agent (internal); a mono file
    is the customer alone."""
    data = path.read_bytes()
    channels = wav_info(data, FILE_RATES).channels
    ext = read_wav_8k(data, channel=0)
    internal = read_wav_8k(data, channel=1) if channels > 1 else None
    return ext, internal


def _load_calls(files: list[Path]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return load_files(files, load_call)


async def _outcomes(args, reports: list[SimReport]) -> list[str]:
    """Each call's verification outcome, read back from the gateway's REST API with a session
    token for its conversation (the verdict never travels over AudioHook itself)."""
    users = [u.strip() for u in (args.users or "").split(",") if u.strip()] or \
        list((args.custom_config or {}).get("userIds") or [])
    if not users:
        return ["verification: no users to check (give --users)"]
    calls = [r.conversation_id for r in reports if r.http_status == 101 and r.conversation_id != NULL_UUID]
    return await verification_lines(args.uri, args.pat, args.tenant, args.profile, users, calls, "conversation")


def main(args) -> int:
    if not args.files and not args.probe:
        print("vbgw audiohook-sim: give at least one FILE.wav (or --probe)", file=sys.stderr)
        return 2
    if args.pat and not (args.tenant and args.profile):
        print("vbgw audiohook-sim: --pat needs --tenant and --profile (to read the verification outcome)",
              file=sys.stderr)
        return 2
    try:
        calls = _load_calls(args.files) or [(np.zeros(8000, np.int16), None)]
    except ValueError as exc:
        print(f"vbgw audiohook-sim: {exc}", file=sys.stderr)
        return 2

    def make(i: int) -> SimOptions:
        kw: dict[str, Any] = {}
        if args.conversation_id and args.sessions == 1:
            kw["conversation_id"] = args.conversation_id
        return SimOptions(uri=args.uri, api_key=args.api_key, client_secret=args.client_secret, org_id=args.org_id,
                          ani=args.ani, custom_config=args.custom_config, speed=0 if args.fast else args.speed,
                          offers=[dict(MONO_PCMU)] if args.mono else [dict(o) for o in DEFAULT_OFFERS],
                          pause_at_s=args.pause_at, pause_for_s=args.pause_for, discard_at_s=args.discard_at,
                          discard_s=args.discard, probe=args.probe, faults=frozenset(args.fault), **kw)

    reports = asyncio.run(run_load(make, calls, args.sessions, args.rate))
    bad = 0
    for r in reports:
        if args.json:
            print(json.dumps(r.summary()))
        else:
            state = "ok" if r.ok else "FAILED"
            print(f"session {r.session_id} conversation {r.conversation_id}: {state} (http {r.http_status}, "
                  f"{r.frames_sent} frames, {r.audio_s:.1f} s audio, {len(r.rtts)} pongs"
                  + (f", disconnect {r.disconnect}" if r.disconnect else "") + ")")
        if r.connect_error:
            print(f"  not connected: {r.connect_error}")
        for v in r.violations:
            if not (r.connect_error and v.startswith("connection failed")):
                print(f"  violation: {v}")
        bad += not r.ok
    rtts = sorted(x for r in reports for x in r.rtts)
    if rtts:
        print(f"pong rtt: p50 {rtts[len(rtts) // 2] * 1000:.1f} ms, p99 "
              f"{rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000:.1f} ms, max {rtts[-1] * 1000:.1f} ms")
    refused = sum(r.connect_error is not None for r in reports)
    print(f"{len(reports) - bad}/{len(reports)} sessions ok, "
          f"{sum(len(r.violations) for r in reports if not r.connect_error)} protocol violations"
          + (f", {refused} not connected" if refused else ""))
    if args.pat and not args.probe:
        for line in asyncio.run(_outcomes(args, reports)):
            print(line)
    elif not args.probe and not args.json and refused < len(reports):
        print("(add --pat PAT --tenant T --profile P --users U to print each call's verification outcome)")
    if refused == len(reports):
        print(f"vbgw audiohook-sim: {reports[0].connect_error}", file=sys.stderr)
    return 1 if bad else 0
