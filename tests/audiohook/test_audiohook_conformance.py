"""AudioHook conformance through the simulator against a real gateway on a loopback socket:
each message type and each failure the issue lists."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from ah_support import org_for, tone

from gateway.audiohook_sim import MONO_PCMU, SimOptions, run_session


@pytest.fixture
def settings(settings):
    settings.audiohook.ping_timeout_s = 2.0        # missed-pings test in seconds, not half a minute
    settings.audiohook.signature_failure_delay_s = 0.3
    return settings


async def statuses(gw, conversation_id: str) -> list[dict]:
    """The call statuses published on the dialog, from /dialog-status history."""
    tok = await gw.token(conversation_id)
    out = []
    async with gw.http.get(f"{gw.url}/dialog-status", params={"token": tok, "lastEventId": "1"},
                           timeout=__import__("aiohttp").ClientTimeout(total=5)) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
                if out[-1]["status"] == "CALL_CLOSED":
                    break
    return out


async def test_happy_call_stereo_pings_pause_discard_close(gateway):
    org = await org_for(gateway)
    rep = await org.run(tone(4.0), tone(4.0, 220), speed=2.0, ping_interval_s=0.5, initial_ping_delay_s=0.2,
                        pause_at_s=1.0, pause_for_s=0.6, discard_at_s=2.4, discard_s=0.4)
    assert rep.ok, rep.summary()
    assert rep.opened["media"] == [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
                                    "rate": 8000}]
    assert len(rep.rtts) >= 2 and max(rep.rtts) < 0.5
    types = [m["type"] for m in rep.messages]
    assert types[0] == "opened" and types[-1] == "closed" and "pong" in types
    st = [s["status"] for s in await statuses(gateway, rep.conversation_id)]
    assert st[-1] == "CALL_CLOSED"
