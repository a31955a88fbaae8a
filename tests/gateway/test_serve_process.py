"""The real `vbgw serve` process: starts, answers, and on SIGTERM stops accepting new
connections while an open stream finishes its session."""
from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import websockets

from support import serve_process


async def test_sigterm_lets_open_streams_finish(tmp_path):
    proc, port, pat, base = await serve_process(tmp_path / "var", VBGW_SERVER__SHUTDOWN_GRACE_S="10")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/token/", headers={"Authorization": f"Bearer {pat}"},
                                 json={"agentId": "a", "agentSkill": "s", "masterId": "m1", "tenantId": "acme",
                                       "vbProfile": "retail", "ccaasProvider": "GENESYS"}) as r:
                tok = (await r.json())["data"]["token"]
        async with websockets.connect(f"ws://127.0.0.1:{port}/agent-vb-mw/stream?token={tok}") as ws:
            await ws.send(json.dumps({"encoding": "l16", "sample_rate": 8000, "dialog_id": "m1"}))
            await ws.recv()
            await ws.send(b"\x00\x00" * 1600)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            # New connections are refused while the open stream carries on.
            refused = False
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/agent-vb-mw/stream?token={tok}",
                                              open_timeout=2):
                    pass
            except (OSError, websockets.InvalidHandshake, asyncio.TimeoutError):
                refused = True
            assert refused
            for _ in range(5):
                await ws.send(b"\x00\x00" * 1600)
            await ws.send(b"")
            assert json.loads(await ws.recv())["event"] == "session_ended"
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert "gateway_stopped" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
