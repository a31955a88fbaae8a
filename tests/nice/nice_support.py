"""Helpers for the NICE tests (a plain module, not a conftest, so its name is unique): a business
unit made with `vbgw nice add-bu`, and a real `websockets` client that speaks as CXone's CAAE
audio relay does (connectors/nice.py has the wire format)."""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
from contextlib import redirect_stdout
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import websockets

from connectors.codecs import encode_mulaw
from support import protocol_audio

A, B = "1688", "1998"            # two speakers of the in-repo protocol (tests/data/README.md)


def speech(*names: str) -> np.ndarray:
    """Real 8 kHz telephony speech, the named files one after the other."""
    parts = []
    for name in names:
        data, rate = sf.read(protocol_audio("ls-other-tel", name), dtype="int16")
        assert rate == 8000
        parts.append(data)
    return np.concatenate(parts)


async def add_bu(settings, bu_id: str = "4606881", tenant: str = "acme", profile: str | None = "retail",
                 rotate: bool = False) -> tuple[dict[str, str], str]:
    """`vbgw nice add-bu` against the gateway's data dir: ({endpoint, header, api_key}, stdout)."""
    from gateway.cli.nice import cli_add_bu
    ns = argparse.Namespace(bu_id=bu_id, tenant=tenant, profile=profile, rotate=rotate, public_host="vb.example.com")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = await cli_add_bu(ns, settings)
    out = buf.getvalue()
    assert rc == 0, out
    last = out.strip().splitlines()[-3:]
    assert [line.split("=", 1)[0] for line in last] == ["endpoint", "header", "api_key"], out
    return dict(line.split("=", 1) for line in last), out


@dataclass
class Socket:
    """What one CXone socket saw: the ack, and the server's later messages and close code."""
    ack: dict | None = None
    messages: list[dict] = field(default_factory=list)
    close_code: int | None = None


@dataclass
class Unit:
    gw: object
    api_key: str
    header: str = "X-Api-Key"
    headers: dict[str, str] = field(default_factory=dict)   # more upgrade headers (a load balancer's route)

    @property
    def uri(self) -> str:
        return f"{self.gw.ws_url}{self.gw.settings.nice.path}"

    def connect(self, carrier: str = "header", key: str | None = None):
        key = self.api_key if key is None else key
        uri, headers = self.uri, dict(self.headers)
        if carrier == "header":
            headers[self.header] = key
        elif carrier == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif carrier == "query":
            uri += f"?token={key}"
        return websockets.connect(uri, additional_headers=headers, max_size=None, ping_interval=None)

    async def stream(self, perspective: str, contact_id: str, audio: np.ndarray | None, params: dict | None = None,
                     end: str = "close", frame_bytes: int = 1600, shape: str = "binary", speed: float = 0,
                     handshake: dict | None = None) -> Socket:
        """One socket: the initial message, mu-law audio (`shape` binary, media or audio), then
        `end`: close (as hold or hang-up does), stop (the event), empty (an empty message) or drop
        (the TCP connection aborted, no close frame). `speed` > 0 paces the audio (1 = real time)."""
        seen = Socket()
        hs = handshake or {"streamPerspective": perspective, "contactId": contact_id,
                           "scriptParams": json.dumps(params or {}), "agentId": "271828"}
        payload = encode_mulaw(audio) if audio is not None else b""
        async with self.connect() as ws:
            await ws.send(json.dumps(hs))
            seen.ack = json.loads(await ws.recv())
            if seen.ack.get("status") != "ok":
                await _drain(ws, seen)
                return seen
            for i in range(0, len(payload), frame_bytes):
                chunk = payload[i:i + frame_bytes]
                if shape == "binary":
                    await ws.send(chunk)
                elif shape == "media":
                    await ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(chunk).decode()}}))
                else:
                    await ws.send(json.dumps({"audio": base64.b64encode(chunk).decode()}))
                if speed:
                    await asyncio.sleep(len(chunk) / 8000 / speed)
            if end == "stop":
                await ws.send(json.dumps({"event": "stop"}))
            elif end == "empty":
                await ws.send(b"")
            elif end == "drop":
                ws.transport.abort()
                return seen
            if end in ("stop", "empty"):
                await _drain(ws, seen)
        seen.close_code = seen.close_code or ws.close_code
        return seen


async def _drain(ws, seen: Socket) -> None:
    try:
        async for msg in ws:
            seen.messages.append(json.loads(msg))
    except websockets.ConnectionClosed:
        pass
    seen.close_code = ws.close_code


async def unit_for(gw, **kw) -> Unit:
    creds, _ = await add_bu(gw.settings, **kw)
    return Unit(gw, creds["api_key"], creds["header"])


async def nice_token(gw, contact_id: str, ani: str | None = None) -> str:
    """The agent's session token for a contact, as a Studio REST API action gets it."""
    r = await gw.http.post(f"{gw.url}/api/token/", headers={"Authorization": f"Bearer {gw.pat}"},
                           json={"agentId": "271828", "agentSkill": "voice", "masterId": contact_id,
                                 "tenantId": "acme", "vbProfile": "retail", "ccaasProvider": "NICE_IN_CONTACT",
                                 "customProperties": {"Ani": ani} if ani else {}})
    body = await r.json()
    assert r.status == 200, body
    return body["data"]["token"]


def events_of(gw, contact_id: str, kind: str = "vb_verification") -> list[dict]:
    path = gw.settings.data_dir / "events.jsonl"
    if not path.exists():
        return []
    return [e for line in path.read_text().splitlines() if (e := json.loads(line))["message_type"] == kind
            and e["dialog_id"] == contact_id]


class Agent:
    """A real Socket.IO client, as the agent widget is: it presents the session token and
    records every event it receives."""

    def __init__(self, token: str):
        import socketio

        from gateway.web.socketio import NAMESPACE
        self.token = token
        self.namespace = NAMESPACE
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, object]] = []
        self.changed = asyncio.Event()

        @self.sio.on("*", namespace=NAMESPACE)
        async def any_event(event, data=None):
            self.events.append((event, data))
            self.changed.set()

    async def follow(self, gw) -> "Agent":
        """Connect and ask for the call's status (the widget does; it then gets every result)."""
        from gateway.web.socketio import PATH
        await self.sio.connect(gw.url, socketio_path=PATH, namespaces=[self.namespace], transports=["websocket"])
        ack = await self.sio.call("status", {"token": self.token, "users": "", "time": ""}, namespace=self.namespace,
                                  timeout=10)
        assert ack == {"ok": True}, ack
        return self

    def of(self, name: str) -> list:
        return [data for event, data in self.events if event == f"{name}-{self.token}"]

    def statuses(self) -> list[str]:
        return [s["status"] for s in self.of("status")]

    def results(self) -> list[dict]:
        """Every verification row received, in order."""
        return [row for batch in self.of("verification") for row in batch]

    async def until(self, pred, timeout: float = 60.0) -> None:
        async def loop():
            while not pred(self):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        await self.sio.disconnect()
