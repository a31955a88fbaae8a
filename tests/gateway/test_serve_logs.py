"""The real `vbgw serve` process under hostile requests (issue #12 item 7): every line it
writes to stderr is one JSON object, and no session token or PAT appears in them, even where
aiohttp quotes a refused request line or a library prints a traceback."""
from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import websockets

from gateway.infra import eventloop
from support import serve_process


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()


async def test_every_stderr_line_is_json_and_tokens_are_redacted(tmp_path):
    proc, port, pat, base = await serve_process(tmp_path / "var", VBGW_LOGGING__LEVEL="debug")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/token/", headers={"Authorization": f"Bearer {pat}"},
                                 json={"agentId": "a", "agentSkill": "s", "masterId": "m1", "tenantId": "acme",
                                       "vbProfile": "retail", "ccaasProvider": "GENESYS"}) as r:
                tok = (await r.json())["data"]["token"]
        # A request line over 8190 bytes carrying the session token.
        head = await _raw(port, f"GET /verification/ondemand?token={tok}&users={'u' * 9000} HTTP/1.1\r\n"
                                f"Host: x\r\n\r\n".encode())
        assert b" 400 " in head.split(b"\r\n")[0] or b" 414 " in head.split(b"\r\n")[0], head
        # Oversized headers, with credentials beside them.
        head = await _raw(port, f"GET /users/info/u1?token={tok} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {pat}"
                                f"\r\nX-Filler: {'f' * 9000}\r\n\r\n".encode())
        assert b" 400 " in head.split(b"\r\n")[0], head
        head = await _raw(port, f"GET /healthz?token={tok} HTTP/1.1\r\nHost: x\r\n".encode()
                          + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n")
        assert b" 400 " in head.split(b"\r\n")[0], head
        # Nested Engine.IO / Socket.IO packets.
        async with websockets.connect(f"ws://127.0.0.1:{port}/agent-socket/socket.io/?EIO=4&transport=websocket"
                                      f"&token={tok}", max_size=None) as ws:
            assert (await ws.recv()).startswith("0")                            # Engine.IO open
            await ws.send("40/agent-socket/socket,")
            await ws.recv()
            await ws.send("42/agent-socket/socket," + "[" * 30000 + "]" * 30000)
            await ws.send('42/agent-socket/socket,["status",{"token":"' + tok + '","x":' + "[" * 5000 + "]" * 5000
                          + "}]")
            await ws.send("4" + "[" * 30000)
            await asyncio.sleep(1.0)
        # The gateway still answers.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        err = proc.stderr.read().decode()
        lines = [line for line in err.splitlines() if line.strip()]
        assert any('"listening"' in line for line in lines) and any("bad_http_request" in line for line in lines) \
            and any("bad_socketio_packet" in line for line in lines)
        for line in lines:
            assert isinstance(json.loads(line), dict), line          # one JSON object per line
        # The process ran on uvloop (server.event_loop's default), so the hostile requests above
        # went through uvloop's transports, not only asyncio's (the in-process tests' loop).
        listening = next(json.loads(line) for line in lines if '"listening"' in line)
        assert listening["event_loop"] == eventloop.loop_factory("uvloop")[1]
        for secret in (tok, pat, pat.removeprefix("vbgw_pat_")):
            assert secret not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_redaction_of_credentials_in_free_text():
    from gateway.infra.logging import redact_text
    tok, pat = "0b5e8f0e-4b8e-4c3e-9d7f-2a6c1e0d9b11", "vbgw_pat_AbCdEf0123456789_-xyz"
    samples = [f"GET /stream?token={tok}&x=1 HTTP/1.1", f"/voice_biometrics/v1/wss/verify?auth_token={tok}",
               f"token%3D{tok}", f"Authorization: Bearer {tok}", f"{{'authorization': 'Bearer : {tok}'}}",
               f"X-API-KEY: {tok}", f"headers=<CIMultiDict('Authorization': 'Basic {tok}')>", f"bearer {pat}", pat]
    for text in samples:
        out = redact_text(text)
        assert tok not in out and "AbCdEf0123456789" not in out and "[redacted]" in out, (text, out)
    assert redact_text("GET /healthz HTTP/1.1") == "GET /healthz HTTP/1.1"
