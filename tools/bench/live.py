"""`vbgw bench live`: many agent clients (Socket.IO and SSE) following live calls.

A gateway in a subprocess (with a results-bus tap, tools/bench/live_server.py); `bench-user`
enrolled; --calls direct streams paced in real time; each call followed by --clients/--calls
clients sharing its session token: one SSE /verification, one SSE /dialog-status, one Socket.IO
client asking for `verification` and the rest Socket.IO clients asking for `status`. Every client
is connected before the audio starts. Reported: the delay from a result's publication on the
bus (inside the gateway) to its receipt by each client, p50/p95/p99/max, for verification results
(EARLY/NORMAL) and for every message, per transport; clients that missed the call's end; the
gateway's CPU and the machine's load average. Client and gateway share the machine, so the
delays include the client process's own scheduling lag (they are upper bounds)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

from gateway.web.socketio import NAMESPACE, PATH
from tools.bench.stream import DEFAULT_PROTOCOL, Server, _call_audio, _p95_from_metrics, _stream, _token
from tools.bench.stream import enrol_bench_user

USER = "bench-user"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=100, help="concurrent live calls")
    p.add_argument("--clients", type=int, default=500, help="agent clients in all (at least 3 per call)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio seconds per call")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which calls start")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)


class Received:
    """(dialog, kind, match key) -> receipt times, per transport."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str, float]] = []   # transport, dialog, kind, key, t
        self.closed: set[int] = set()

    def add(self, transport: str, dialog: str, kind: str, key: str) -> None:
        self.rows.append((transport, dialog, kind, key, time.time()))


def _sio_key(kind: str, data) -> str:
    """The bus match key of a Socket.IO payload (inverse of the renderers in gateway.web.live)."""
    if kind == "status":
        return data["status"]
    if kind == "clean_speech":
        return str(data["cleanSpeechDuration"])
    return f'{data[0]["limitType"]}:{data[0]["speechMillis"]}'


class RawSocketIO:
    """A lean Socket.IO client (Engine.IO v4 over one WebSocket: handshake, namespace connect,
    events with acks, pong). python-socketio's AsyncClient costs the client process several ms
    of CPU per event; on a 2-core machine shared with the gateway that would measure the
    client, not the gateway. The tests use the real AsyncClient and Node's socket.io-client."""

    def __init__(self, http: aiohttp.ClientSession, url: str, on_event):
        self.http, self.url, self.on_event = http, url, on_event
        self.acks: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.ws = None
        self.reader: asyncio.Task | None = None

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url.replace("http", "ws", 1) + PATH + "/?EIO=4&transport=websocket")
        opened = await self.ws.receive_str()
        if not opened.startswith("0"):
            raise RuntimeError(f"unexpected Engine.IO open packet {opened[:40]!r}")
        await self.ws.send_str(f"40{NAMESPACE},")
        joined = await self.ws.receive_str()
        if not joined.startswith(f"40{NAMESPACE},"):
            raise RuntimeError(f"namespace refused: {joined[:80]!r}")
        self.reader = asyncio.create_task(self._read())

    async def call(self, event: str, data) -> object:
        self.next_id += 1
        fut = self.acks[self.next_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(f"42{NAMESPACE},{self.next_id}" + json.dumps([event, data]))
        return (await asyncio.wait_for(fut, 30))[0]

    async def _read(self) -> None:
        ev, ack = f"42{NAMESPACE},", f"43{NAMESPACE},"
        async for msg in self.ws:
            text = msg.data
            if text == "2":
                await self.ws.send_str("3")
            elif text.startswith(ev):
                args = json.loads(text[len(ev):])
                self.on_event(args[0], args[1] if len(args) > 1 else None)
            elif text.startswith(ack):
                rest = text[len(ack):]
                i = rest.index("[")
                fut = self.acks.pop(int(rest[:i]), None)
                if fut is not None and not fut.done():
                    fut.set_result(json.loads(rest[i:]))

    async def disconnect(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        await self.ws.close()


async def sio_client(http: aiohttp.ClientSession, url: str, token: str, dialog: str, event: str, rec: Received,
                     cid: int) -> RawSocketIO:
    names = {f"status-{token}": "status", f"verification-{token}": "verification",
             f"clean-speech-{token}": "clean_speech"}

    def on_event(name, data):
        kind = names.get(name)
        if kind is None:
            return
        rec.add("socketio", dialog, kind, _sio_key(kind, data))
        if kind == "status" and data["status"] == "CALL_CLOSED":
            rec.closed.add(cid)

    sio = RawSocketIO(http, url, on_event)
    await sio.connect()
    for ev in dict.fromkeys(("status", event)):       # an agent desktop asks for the status, and maybe results
        ack = await sio.call(ev, {"token": token, "users": USER, "time": ""})
        if ack != {"ok": True}:
            raise RuntimeError(f"Socket.IO {ev} refused: {ack}")
    return sio


async def sse_client(http: aiohttp.ClientSession, url: str, path: str, token: str, dialog: str, rec: Received,
                     cid: int, ready: asyncio.Event) -> None:
    params = {"token": token, **({"users": USER} if path == "/verification" else {})}
    async with http.get(f"{url}{path}", params=params,
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
        ready.set()
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = json.loads(line[5:])
            if isinstance(data, list):
                rec.add("sse", dialog, "verification", f'{data[0]["result_type"]}:{data[0]["speech_millis"]}')
            elif "reason" in data and "status" not in data:     # the stream's end event
                rec.closed.add(cid)
            elif "status" in data:
                rec.add("sse", dialog, "status", data["status"])
                if data["status"] == "CALL_CLOSED":
                    rec.closed.add(cid)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _summary(delays: list[float]) -> dict:
    ms = [d * 1000 for d in delays]
    return {"n": len(ms), **{k: (round(v, 1) if v is not None else None)
                             for k, v in (("p50_ms", _pct(ms, 0.5)), ("p95_ms", _pct(ms, 0.95)),
                                          ("p99_ms", _pct(ms, 0.99)), ("max_ms", max(ms) if ms else None))}}


def delays(tap_path: Path, rec: Received) -> dict:
    published: dict[tuple[str, str, str], float] = {}
    lags: list[float] = []
    for line in tap_path.read_text().splitlines():
        ts, dialog, kind, key = json.loads(line)
        if kind == "_lag":
            lags.append(key)
            continue
        published.setdefault((dialog, kind, key), ts)
    by: dict[str, list[float]] = defaultdict(list)
    unmatched = 0
    for transport, dialog, kind, key, t in rec.rows:
        ts = published.get((dialog, kind, key))
        # STARTING answers a request and CALL_OPENED is the state a client gets on joining:
        # neither is a result the call produced.
        if ts is None or key.startswith("STARTING") or key == "CALL_OPENED":
            unmatched += ts is None
            continue
        d = max(0.0, t - ts)
        by["all"].append(d)
        by[f"all_{transport}"].append(d)
        if kind == "verification":
            by["results"].append(d)
            by[f"results_{transport}"].append(d)
    return {"published": len(published), "unmatched": unmatched, "gateway_loop_lag": _summary(lags),
            **{k: _summary(v) for k, v in sorted(by.items())}}


async def run(args, url: str, ws_url: str, pat: str, server: Server) -> tuple[dict, Received]:
    per_call = max(3, args.clients // args.calls)
    extra = args.clients - per_call * args.calls
    calls = _call_audio(args.protocol, args.seconds)
    rec = Received()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tokens = [await _token(http, url, pat, f"live-{i}") for i in range(args.calls)]
        sse_tasks, sios, cid = [], [], 0
        for i, tok in enumerate(tokens):
            dialog = f"live-{i}"
            n = per_call + (1 if i < extra else 0)
            for path in ("/verification", "/dialog-status"):
                ready = asyncio.Event()
                sse_tasks.append(asyncio.create_task(sse_client(http, url, path, tok, dialog, rec, cid, ready)))
                await ready.wait()
                cid += 1
            for k in range(n - 2):
                sios.append(sio_client(http, url, tok, dialog, "verification" if k == 0 else "status", rec, cid))
                cid += 1
        clients = await asyncio.gather(*sios)
        n_sse, n_sio = len(sse_tasks), len(clients)
        lags: list[float] = []

        async def lag_probe():       # this client process's own event-loop lag
            while True:
                t = time.monotonic()
                await asyncio.sleep(0.1)
                lags.append(time.monotonic() - t - 0.1)

        probe = asyncio.create_task(lag_probe())
        load_before = os.getloadavg()
        cpu0, wall0 = server.cpu_seconds(), time.monotonic()

        async def one(i):
            await asyncio.sleep(args.ramp * i / max(1, args.calls))
            await _stream(ws_url, tokens[i], f"live-{i}", calls[i % len(calls)], paced=True)

        await asyncio.gather(*(one(i) for i in range(args.calls)))
        load_during = os.getloadavg()
        deadline = time.monotonic() + 30
        while len(rec.closed) < cid and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
        mtok = (server.data_dir / "metrics.token").read_text().strip()
        async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {mtok}"}) as r:
            metrics = await r.text()
        probe.cancel()
        for c in clients:
            await c.disconnect()
        for t in sse_tasks:
            t.cancel()
    p95 = _p95_from_metrics(metrics, "vbgw_socketio_delivery_seconds")
    return {"calls": args.calls, "clients": n_sse + n_sio, "sse_clients": n_sse, "socketio_clients": n_sio,
            "clients_missing_call_end": cid - len(rec.closed), "wall_s": round(wall, 1), "gateway_cpu_s": round(cpu, 1),
            "loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after_calls": round(load_during[0], 2),
            "server_socketio_emit_p95_s_bucket": round(p95, 3) if p95 is not None else None,
            "engine_dropped_audio": [line for line in metrics.splitlines() if line.startswith("vbgw_engine_dropped")],
            "received": len(rec.rows), "client_loop_lag": _summary(lags)}, rec


async def amain(args) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="vbgw-bench-live-"))
    tap = data_dir / "bus-tap.jsonl"
    os.environ["VBGW_BENCH_BUS_TAP"] = str(tap)
    server = Server(data_dir)
    pat = server.admin_bootstrap()
    await server.start(module="tools.bench.live_server")
    url, ws_url = f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}"
    try:
        if not await enrol_bench_user(url, ws_url, pat, args.protocol):
            return 1
        res, rec = await run(args, url, ws_url, pat, server)
    finally:
        server.stop()
    res["delays"] = delays(tap, rec)
    with open(data_dir / "received.jsonl", "w") as f:       # for a closer look: one line per receipt
        for row in rec.rows:
            f.write(json.dumps(row) + "\n")
    res["data_dir"] = str(data_dir)
    print(json.dumps(res, indent=1), flush=True)
    ok = (res["delays"].get("results", {}).get("p95_ms") or 1e9) < 100 and not res["clients_missing_call_end"]
    print(f"p95 delay from a verification result to its clients: {res['delays'].get('results', {}).get('p95_ms')} ms "
          f"({'meets' if ok else 'MISSES'} the 100 ms target)")
    return 0


def main(args) -> int:
    return asyncio.run(amain(args))
