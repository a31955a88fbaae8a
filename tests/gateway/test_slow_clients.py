"""Idle, slow and never-reading clients (issue #12 item 4): each is let go after its timeout,
and what it held is freed. The gateway runs as `vbgw serve` runs it (gateway.web.server.start_site,
with the connection guard), with timeouts of about a second; the tests wait up to 30 s, so a
loaded machine makes them slower, not red."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import aiohttp
import pytest
import socketio

from gateway.calls.results import Status
from gateway.web.appkeys import SERVICES
from support import Gateway, admin, pat_of

WAIT_S = 30.0


@pytest.fixture
async def served(settings, engine):
    """(Gateway, ConnectionGuard) on a real listening socket with short limits."""
    from gateway.app import create_app
    from gateway.web.server import start_site
    s = settings.server
    s.keepalive_timeout_s = 1.0
    s.body_timeout_s = 1.0
    s.send_timeout_s = 1.0
    s.first_message_timeout_s = 1.0
    s.socketio_auth_timeout_s = 1.0
    s.max_connections_per_client = 20
    pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    app = create_app(settings, engine=engine)
    runner, site, guard = await start_site(app, settings, port=0)
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield Gateway(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", http, settings, pat, app), guard
    finally:
        await guard.close()
        await runner.cleanup()


def _port(gw) -> int:
    return int(gw.url.rsplit(":", 1)[1])


async def _open(gw, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", _port(gw), local_addr=(source, 0))


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (fails after WAIT_S)."""
    data = b""
    async with asyncio.timeout(WAIT_S):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def test_idle_connections_and_trickled_headers_are_closed(served):
    gw, _ = served
    reader, writer = await _open(gw)                         # connects, never sends
    assert await _closed_by_server(reader) == b""
    writer.close()

    reader, writer = await _open(gw)                         # slowloris: headers never finish
    started = time.monotonic()

    async def trickle():
        for line in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n") + (b"X-a: b\r\n",) * 100:
            writer.write(line)
            await asyncio.sleep(0.3)
    t = asyncio.create_task(trickle())
    got = await _closed_by_server(reader)
    t.cancel()
    writer.close()
    assert b"200 OK" not in got and time.monotonic() - started < WAIT_S

    # An idle keep-alive connection after a response is closed too.
    reader, writer = await _open(gw)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await _closed_by_server(reader)
    writer.close()
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b'{"status": "ok"}')


async def test_a_trickled_body_gets_408(served):
    gw, _ = served
    tok = await gw.token("slow-body")
    reader, writer = await _open(gw)
    writer.write(f"POST /users/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"biokeys\": [".encode())
    got = await _closed_by_server(reader)
    writer.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), got
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"


async def test_connections_per_client_address_are_capped(served):
    gw, guard = served
    cap = gw.settings.server.max_connections_per_client
    held = [await _open(gw, "127.0.0.2") for _ in range(cap)]
    reader, writer = await _open(gw, "127.0.0.2")
    refused = await _closed_by_server(reader)
    writer.close()
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"]["code"] == "TOO_MANY_CONNECTIONS"
    # Another address is not affected, and a closed connection frees its place.
    status, _ = await gw.call("GET", "/healthz")
    assert status == 200
    held.pop()[1].close()
    async with asyncio.timeout(WAIT_S):
        while guard.per_address.get("127.0.0.2", 0) >= cap:
            await asyncio.sleep(0.05)
    reader, writer = await _open(gw, "127.0.0.2")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _closed_by_server(reader)).startswith(b"HTTP/1.1 200")
    for _, w in held:
        w.close()
    writer.close()


async def test_a_never_reading_sse_client_is_dropped_and_its_subscription_freed(served):
    gw, guard = served
    core = gw.app[SERVICES]
    tok = await gw.token("sse-stall")
    before = core.bus.subscriber_count()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)    # a small window: the stall shows sooner
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", _port(gw)))
    sock.send(f"GET /dialog-status?token={tok} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(WAIT_S):
        while core.bus.subscriber_count() == before:
            await asyncio.sleep(0.05)
    key = next(k for k in core.bus._subs if k[1] == "sse-stall")
    # Publish far more than any socket buffer holds; the client reads nothing.
    async with asyncio.timeout(WAIT_S * 2):
        while core.bus.subscriber_count() > before:
            for _ in range(20):
                core.bus.publish(key, Status("X" * 50_000))
            await asyncio.sleep(0.05)
    assert guard.aborted >= 1
    sock.close()


async def test_unauthenticated_socketio_clients_are_disconnected(served):
    gw, _ = served
    from gateway.web.socketio import NAMESPACE, PATH
    gone = []
    for namespaces in ([NAMESPACE], ["/"]):                  # ours without a token; the default one
        client = socketio.AsyncClient(reconnection=False)
        disconnected = asyncio.Event()
        client.on("disconnect", lambda *a: disconnected.set(), namespace=namespaces[0])
        await client.connect(gw.url, socketio_path=PATH, namespaces=namespaces, transports=["websocket"])
        try:
            await asyncio.wait_for(disconnected.wait(), WAIT_S)
            gone.append(namespaces[0])
        finally:
            await client.disconnect()
    assert gone == [NAMESPACE, "/"]


async def test_an_authenticated_socketio_client_stays(served):
    gw, _ = served
    from gateway.web.socketio import NAMESPACE, PATH
    tok = await gw.token("sio-ok")
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(gw.url, socketio_path=PATH, namespaces=[NAMESPACE], transports=["websocket"])
    try:
        ack = await client.call("status", {"token": tok, "users": ""}, namespace=NAMESPACE, timeout=WAIT_S)
        assert ack == {"ok": True}
        await asyncio.sleep(3.0)                             # three grace periods
        assert client.connected
    finally:
        await client.disconnect()


async def test_a_never_reading_socketio_client_is_dropped_and_its_feed_freed(served):
    """Socket.IO over a WebSocket: python-engineio queues every packet for a client without
    bound; a client that stopped reading must be let go and its dialog feed closed."""
    import websockets

    from gateway.web.socketio import HUB, NAMESPACE, PATH
    gw, guard = served
    hub, core = gw.app[HUB], gw.app[SERVICES]
    tok = await gw.token("sio-stall")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", _port(gw)))
    # max_queue=1: once a message waits unread, the client stops reading the socket at all
    ws = await websockets.connect(f"{gw.ws_url}{PATH}/?EIO=4&transport=websocket", sock=sock, max_queue=1,
                                  ping_interval=None, max_size=None)
    try:
        assert (await ws.recv()).startswith("0")
        await ws.send(f"40{NAMESPACE},")
        assert (await ws.recv()).startswith(f"40{NAMESPACE},")
        await ws.send(f'42{NAMESPACE},1["status",{{"token":"{tok}","users":""}}]')
        async with asyncio.timeout(WAIT_S):
            while not any(hub.clients.values()):
                await asyncio.sleep(0.05)
        key = next(iter(hub.feeds))
        aborted = guard.aborted
        async with asyncio.timeout(WAIT_S * 2):          # the client reads nothing from here on
            while hub.feeds or any(hub.clients.values()):
                for _ in range(20):                       # random text: permessage-deflate cannot shrink it
                    core.bus.publish(key, Status(base64.b64encode(os.urandom(40_000)).decode()))
                await asyncio.sleep(0.05)
        assert guard.aborted > aborted
    finally:
        ws.transport.abort() if hasattr(ws, "transport") else None
        sock.close()
