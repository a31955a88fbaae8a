"""`vbgw nice-sim`: a client that streams WAV files as NICE CXone's Agent Assist Hub audio relay
does (the wire format connectors/nice.py accepts; docs/nice-cxone.md section 7).

Per call (one contact): a TX socket with the customer's audio and, for a stereo file, an RX
socket with the agent's, at once; each sends the initial message (`streamPerspective`, `contactId`,
`scriptParams` as a JSON string, `agentId`), waits for the acknowledgement, then sends G.711 mu-law
in 20 ms binary messages (or the JSON `media` / `audio` shapes) paced in real time (or faster),
and ends by closing the socket (as CXone does), a `stop` event or an empty message. A hold closes
every socket of the call at a given position and opens new ones with the same initial message
after a pause. `--mix` sends one MIX socket with both voices summed instead. Faults make it
misbehave on purpose. It checks what the server sends (the acknowledgement's fields, `ended` and
close code 1000 after an in-band end, no message it did not expect) and reports each violation;
with a PAT it reads each call's verification back from the REST API. Many calls run at once
(`--calls`, `--rate`): it doubles as an admin's probe and a load generator."""
from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from connectors.codecs import FILE_RATES, encode_mulaw, read_wav_8k, wav_info
from tools.sim_support import load_files, staggered, verification_lines
from gateway.cli.nice import NICE_SIM_FAULTS as FAULTS  # noqa: F401  (one list, the command line's)


@dataclass
class NiceSimOptions:
    uri: str
    api_key: str
    header: str = "X-Api-Key"
    auth: str = "header"                  # header | bearer | query
    contact_id: str = field(default_factory=lambda: str(uuid.uuid4().int)[:12])
    ani: str = ""
    script_params: dict | None = None
    agent_id: str = "vbgw-nice-sim"
    frame_ms: int = 20
    speed: float = 1.0                    # 1 = real time; 0 = as fast as possible
    shape: str = "binary"
    end: str = "close"
    hold_at_s: float | None = None
    hold_for_s: float = 2.0
    mix: bool = False
    probe: bool = False
    faults: frozenset[str] = frozenset()
    timeout_s: float = 10.0


@dataclass
class SocketReport:
    perspective: str
    part: int                             # 1, then 2 after a hold
    http_status: int | None = None
    ack: dict | None = None
    error: dict | None = None             # the server's {"code", "message"}
    ended: bool = False                   # `ended` after an in-band end
    close_code: int | None = None
    frames_sent: int = 0
    audio_s: float = 0.0


@dataclass
class CallReport:
    contact_id: str
    sockets: list[SocketReport] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    connect_error: str | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.connect_error is None

    def summary(self) -> dict[str, Any]:
        return {"contact_id": self.contact_id, "ok": self.ok, "elapsed_s": round(self.elapsed_s, 3),
                "violations": self.violations, "connect_error": self.connect_error,
                "sockets": [{"perspective": s.perspective, "part": s.part, "http_status": s.http_status,
                             "ack": s.ack, "error": s.error, "ended": s.ended, "close_code": s.close_code,
                             "frames_sent": s.frames_sent, "audio_s": round(s.audio_s, 3)} for s in self.sockets]}


def refusal(status: int, uri: str) -> str:
    """What an operator should check when the gateway refuses the upgrade with `status`."""
    return {
        401: "401 Unauthorized: the API key was refused (check --api-key against `vbgw nice add-bu`'s output, "
             "and --header against the gateway's nice.header)",
        400: "400 Bad Request: not a WebSocket upgrade",
        404: f"404 Not Found: no NICE endpoint at {uri} (the gateway's nice.path, by default /nice/ws; "
             "nice.enabled)",
    }.get(status, f"HTTP {status}: the gateway refused the WebSocket upgrade")


class _Call:
    def __init__(self, opts: NiceSimOptions, customer: np.ndarray, agent: np.ndarray | None):
        self.o = opts
        self.customer = customer
        self.agent = agent
        self.r = CallReport(opts.contact_id)

    def _connect(self):
        o = self.o
        key = "0" * 64 if "wrong_key" in o.faults else o.api_key
        uri, headers = o.uri, {}
        if o.auth == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif o.auth == "query":
            uri += ("&" if "?" in uri else "?") + f"token={key}"
        else:
            headers[o.header] = key
        return websockets.connect(uri, additional_headers=headers, max_size=None, ping_interval=None,
                                  open_timeout=o.timeout_s)

    def handshake(self, perspective: str) -> str:
        params = dict(self.o.script_params or {})
        if self.o.ani:
            params.setdefault("Ani", self.o.ani)
        return json.dumps({"streamPerspective": perspective, "contactId": self.o.contact_id,
                           "scriptParams": json.dumps(params), "agentId": self.o.agent_id})

    def _frames(self, audio: np.ndarray) -> list[bytes]:
        payload = encode_mulaw(audio)
        n = max(1, self.o.frame_ms * 8)
        return [payload[i:i + n] for i in range(0, len(payload), n)]

    def _encode(self, chunk: bytes) -> str | bytes:
        if self.o.shape == "media":
            return json.dumps({"event": "media", "media": {"payload": base64.b64encode(chunk).decode()}})
        if self.o.shape == "audio":
            return json.dumps({"audio": base64.b64encode(chunk).decode()})
        return chunk

    async def _socket(self, perspective: str, audio: np.ndarray, part: int, end: str) -> SocketReport:
        o, s = self.o, SocketReport(perspective, part)
        self.r.sockets.append(s)
        tag = f"{perspective}#{part}"
        try:
            ws = await self._connect()
        except websockets.InvalidStatus as exc:
            s.http_status = exc.response.status_code
            self.r.connect_error = refusal(s.http_status, o.uri)
            return s
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as exc:
            self.r.connect_error = f"cannot connect to {o.uri}: {exc}"
            return s
        s.http_status = 101
        stop_sending = asyncio.Event()
        late: list[dict] = []

        async def read() -> None:
            try:
                async for msg in ws:
                    if not isinstance(msg, str):
                        self.r.violations.append(f"{tag}: the server sent a binary message")
                        continue
                    try:
                        data = json.loads(msg)
                    except ValueError:
                        self.r.violations.append(f"{tag}: the server sent text that is not JSON")
                        continue
                    if data.get("status") == "error":
                        s.error = data.get("error")
                        stop_sending.set()
                    elif data.get("status") == "ended":
                        s.ended = True
                        if data.get("contactId") != o.contact_id:
                            self.r.violations.append(f"{tag}: `ended` names contact {data.get('contactId')!r}")
                    else:
                        late.append(data)
            except websockets.ConnectionClosed:
                pass
            finally:
                stop_sending.set()

        reader: asyncio.Task | None = None
        try:
            if "audio_before_handshake" in o.faults:
                await ws.send(b"\xff" * 160)
            await ws.send("{not json" if "bad_handshake" in o.faults else self.handshake(perspective))
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), o.timeout_s))
            except asyncio.TimeoutError:
                self.r.violations.append(f"{tag}: no acknowledgement within {o.timeout_s:g} s")
                first = {}
            if first.get("status") == "error":
                s.error = first.get("error")
            elif first:
                s.ack = first
                want = {"status": "ok", "streamPerspective": perspective, "contactId": o.contact_id}
                wrong = {k: first.get(k) for k, v in want.items() if first.get(k) != v}
                if wrong:
                    self.r.violations.append(f"{tag}: unexpected acknowledgement fields {wrong}")
            reader = asyncio.create_task(read())
            if s.ack is not None and not o.probe:
                await self._send_audio(ws, s, audio, stop_sending)
            if "drop" in o.faults and s.error is None:
                ws.transport.abort()                    # no close frame: a broken connection
                reader.cancel()
                return s
            if s.error is None and ws.close_code is None:
                if end == "stop":
                    await ws.send(json.dumps({"event": "stop"}))
                elif end == "empty":
                    await ws.send(b"")
                else:
                    await ws.close()
        except websockets.ConnectionClosed:
            pass
        if reader is not None:
            try:
                await asyncio.wait_for(reader, o.timeout_s)
            except asyncio.TimeoutError:
                self.r.violations.append(f"{tag}: the server did not close within {o.timeout_s:g} s")
        await ws.close()
        s.close_code = ws.close_code
        if s.error is not None:
            self.r.violations.append(f"{tag}: server error {s.error.get('code')}: {s.error.get('message')} "
                                     f"(close {s.close_code})")
        elif s.ack is None:
            self.r.violations.append(f"{tag}: closed before any acknowledgement (close {s.close_code})")
        elif end in ("stop", "empty") and not (s.ended and s.close_code == 1000):
            self.r.violations.append(f"{tag}: no `ended` and close 1000 after the {end} (close {s.close_code})")
        elif s.close_code != 1000:
            self.r.violations.append(f"{tag}: the server closed the socket with code {s.close_code}")
        for data in late:
            self.r.violations.append(f"{tag}: unexpected message {json.dumps(data)[:200]}")
        return s

    async def _send_audio(self, ws, s: SocketReport, audio: np.ndarray, stop: asyncio.Event) -> None:
        o = self.o
        t0 = time.monotonic()
        sent_s = 0.0
        for i, chunk in enumerate(self._frames(audio)):
            if stop.is_set():
                return
            if i == 2 and "bad_base64" in o.faults:
                await ws.send(json.dumps({"audio": "***"}))
            elif i == 2 and "oversized_frame" in o.faults:
                await ws.send(b"\xff" * (1 << 20))
            else:
                await ws.send(self._encode(chunk))
            s.frames_sent += 1
            sent_s += len(chunk) / 8000
            s.audio_s = sent_s
            if o.speed > 0:
                ahead = t0 + sent_s / o.speed - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif i % 50 == 49:
                await asyncio.sleep(0)                   # let the reader see an error

    async def run(self) -> CallReport:
        o = self.o
        started = time.monotonic()
        streams: list[tuple[str, np.ndarray]]
        if o.mix:
            mixed = self.customer.astype(np.int32)
            if self.agent is not None:
                n = max(len(mixed), len(self.agent))
                mixed = np.pad(mixed, (0, n - len(mixed))) + np.pad(self.agent.astype(np.int32), (0, n - len(self.agent)))
            streams = [("MIX", np.clip(mixed, -32768, 32767).astype(np.int16))]
        else:
            streams = [("TX", self.customer)] + ([("RX", self.agent)] if self.agent is not None else [])
        cut = int(o.hold_at_s * 8000) if o.hold_at_s is not None and not o.probe else None
        if cut is None:
            await asyncio.gather(*(self._socket(p, a, 1, o.end) for p, a in streams))
        else:
            await asyncio.gather(*(self._socket(p, a[:cut], 1, "close") for p, a in streams))
            if self.r.ok:
                await asyncio.sleep(o.hold_for_s)
                await asyncio.gather(*(self._socket(p, a[cut:], 2, o.end) for p, a in streams))
        self.r.elapsed_s = time.monotonic() - started
        return self.r


async def run_call(opts: NiceSimOptions, customer: np.ndarray, agent: np.ndarray | None = None) -> CallReport:
    """One simulated CXone contact; never raises for server misbehaviour (see the report)."""
    return await _Call(opts, customer, agent).run()


async def run_load(make_opts, calls: list[tuple[np.ndarray, np.ndarray | None]], n: int,
                   rate: float) -> list[CallReport]:
    """`n` contacts started `rate` per second; make_opts(i) gives each one's options."""
    return await staggered(lambda i: run_call(make_opts(i), *calls[i % len(calls)]), n, rate)


def load_call(path: Path, customer_channel: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """A WAV file as (customer, agent), decoded as the gateway decodes uploads. Mono: the customer
    alone (TX only). Stereo: the customer is `customer_channel` (default 1, the right: NICE's
    recordings put the agent left and the customer right), the agent the other."""
    data = path.read_bytes()
    if wav_info(data, FILE_RATES).channels < 2:
        return read_wav_8k(data), None
    return read_wav_8k(data, channel=customer_channel), read_wav_8k(data, channel=1 - customer_channel)


def _load_calls(files: list[Path], customer_channel: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return load_files(files, lambda f: load_call(f, customer_channel))


async def _outcomes(args, reports: list[CallReport]) -> list[str]:
    """Each contact's verification, read back from the REST API with a session token for it: the
    users of --users, else the caller's number (the automatic verification's fallback user id)."""
    from gateway.web.audiohook import normalize_ani
    users = [u.strip() for u in (args.users or "").split(",") if u.strip()] or \
        ([normalize_ani(args.ani)] if args.ani else [])
    if not users:
        return ["verification: no users to check (give --users or --ani)"]
    calls = [r.contact_id for r in reports if not r.connect_error]
    return await verification_lines(args.uri, args.pat, args.tenant, args.profile, users, calls, "contact")


def main(args) -> int:
    if not args.files and not args.probe:
        print("vbgw nice-sim: give at least one FILE.wav (or --probe)", file=sys.stderr)
        return 2
    if args.pat and not (args.tenant and args.profile):
        print("vbgw nice-sim: --pat needs --tenant and --profile (to read the verification outcome)", file=sys.stderr)
        return 2
    try:
        calls = _load_calls(args.files, args.customer_channel) or [(np.zeros(8000, np.int16), None)]
    except ValueError as exc:
        print(f"vbgw nice-sim: {exc}", file=sys.stderr)
        return 2

    def make(i: int) -> NiceSimOptions:
        kw: dict[str, Any] = {}
        if args.contact_id:
            kw["contact_id"] = args.contact_id if args.calls == 1 else f"{args.contact_id}-{i + 1}"
        return NiceSimOptions(uri=args.uri, api_key=args.api_key, header=args.header, auth=args.auth, ani=args.ani,
                              script_params=args.script_params, speed=0 if args.fast else args.speed,
                              frame_ms=args.frame_ms, shape=args.shape, end=args.end, hold_at_s=args.hold_at,
                              hold_for_s=args.hold_for, mix=args.mix, probe=args.probe,
                              faults=frozenset(args.fault), **kw)

    reports = asyncio.run(run_load(make, calls, args.calls, args.rate))
    bad = 0
    for r in reports:
        if args.json:
            print(json.dumps(r.summary()))
        else:
            socks = ", ".join(f"{s.perspective}#{s.part} {s.audio_s:.1f} s" + (" ended" if s.ended else "")
                              + (f" close {s.close_code}" if s.close_code not in (None, 1000) else "")
                              for s in r.sockets)
            print(f"contact {r.contact_id}: {'ok' if r.ok else 'FAILED'} ({socks}; {r.elapsed_s:.1f} s)")
            if r.connect_error:
                print(f"  not connected: {r.connect_error}")
            for v in r.violations:
                print(f"  violation: {v}")
        bad += not r.ok
    refused = sum(r.connect_error is not None for r in reports)
    print(f"{len(reports) - bad}/{len(reports)} contacts ok, "
          f"{sum(len(r.violations) for r in reports)} violations" + (f", {refused} not connected" if refused else ""))
    if args.pat and not args.probe:
        for line in asyncio.run(_outcomes(args, reports)):
            print(line)
    elif not args.probe and not args.json and refused < len(reports):
        print("(add --pat PAT --tenant T --profile P [--users U] to print each contact's verification)")
    return 1 if bad else 0
