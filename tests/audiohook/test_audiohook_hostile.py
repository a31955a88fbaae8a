"""Hostile input on the AudioHook endpoint (issue #12 item 6): a deeply nested message once
made the server answer `disconnect "Server error"`; bad client input gets the protocol's own
answer for a bad message (`disconnect` with reason error and a "Client Error" info)."""
from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from audiohook_support import org_for


async def test_audiohook_deeply_nested_message_gets_a_client_error_disconnect(gateway):
    gw = gateway
    org = await org_for(gw)
    for depth in (40, 30000):
        async with org.connect() as ws:
            await ws.send("[" * depth + "]" * depth)
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert msg["type"] == "disconnect" and msg["parameters"]["reason"] == "error", msg
        assert msg["parameters"]["info"].startswith("Client Error"), msg
    # and a frame over the reader's limit gets the protocol's answer, not a bare close
    async with org.connect() as ws:
        await ws.send("x" * 300_000)
        msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert msg["type"] == "disconnect" and msg["parameters"]["info"].startswith("Client Error"), msg


async def test_a_silent_audiohook_socket_is_closed_after_the_open_timeout(gateway):
    """Guards the idle-socket rule for AudioHook (audiohook.open_timeout_s, already enforced)."""
    gw = gateway
    gw.settings.audiohook.open_timeout_s = 1.0
    org = await org_for(gw)
    async with org.connect() as ws:
        with pytest.raises(websockets.ConnectionClosed) as exc:
            await asyncio.wait_for(ws.recv(), 30)
    assert exc.value.rcvd.code == 1008
