"""AudioHook with real speech: the stereo channel order decides who is scored, session tokens
bind to the call's dialog whether created before or after the AudioHook session, and
customConfig / the participant's ANI get a call scored with no agent action."""
from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import socketio
from audiohook_support import org_for, speech

from connectors.codecs import encode_mulaw
from gateway.web.socketio import NAMESPACE, PATH

A, B = "1688", "1998"


def call_of(spk: str, *parts: int) -> np.ndarray:
    return np.concatenate([speech(f"{spk}_test{i}") for i in parts])


async def enrol_a(gw) -> None:
    """Speaker A enrolled through the OCP direct stream and POST /enrol, with an Ani biokey."""
    tok = await gw.token("enrol-a", custom={"Ani": "5551688"})
    await gw.stream(tok, "enrol-a", encode_mulaw(speech(f"{A}_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": "cust-a"})
    assert status == 200, body


async def ondemand(gw, token: str) -> dict:
    status, body = await gw.call("GET", "/verification/ondemand", params={"users": "cust-a", "token": token})
    assert status == 200, body
    return body


async def test_channel_order_and_token_binding(gateway):
    gw = gateway
    await enrol_a(gw)
    org = await org_for(gw)

    # A on external (customer), B on internal (agent); token created before the session opens.
    conv1 = str(uuid.uuid4())
    tok1 = await gw.token(conv1)
    rep = await org.run(call_of(A, 1, 2), call_of(B, 0, 1), conversation_id=conv1)
    assert rep.ok, rep.summary()
    same = await ondemand(gw, tok1)
    assert same["bio_result"].startswith("TRUE_"), same
    assert same["speech_millis"] > 3000

    # Swapped channel order: B is the customer now; token created after the session ended.
    conv2 = str(uuid.uuid4())
    rep = await org.run(call_of(B, 0, 1), call_of(A, 1, 2), conversation_id=conv2)
    assert rep.ok, rep.summary()
    other = await ondemand(gw, await gw.token(conv2))
    assert other["bio_result"].startswith("FALSE_"), other

    # The same call offered with the channels in the other order: split by the selected order.
    conv3 = str(uuid.uuid4())
    order = {"type": "audio", "format": "PCMU", "channels": ["internal", "external"], "rate": 8000}
    rep = await org.run(call_of(A, 1, 2), call_of(B, 0, 1), conversation_id=conv3, offers=[order])
    assert rep.ok and rep.opened["media"] == [order], rep.summary()
    assert (await ondemand(gw, await gw.token(conv3)))["bio_result"].startswith("TRUE_")


async def test_custom_config_and_ani_score_without_agent_action(gateway):
    gw = gateway
    await enrol_a(gw)
    org = await org_for(gw)
    conv = str(uuid.uuid4())
    rep = await org.run(call_of(A, 1, 2, 3), None, conversation_id=conv, ani="tel:555-1688",
                        custom_config={"vbProfile": "retail", "aniBiokey": "Ani"})
    assert rep.ok, rep.summary()
    events = [json.loads(line) for line in (gw.settings.data_dir / "events.jsonl").read_text().splitlines()]
    ver = [e for e in events if e["message_type"] == "vb_verification" and e["dialog_id"] == conv]
    assert ver and ver[-1]["enrolled_user"]["user_id"] == "cust-a"
    assert ver[-1]["verification_result"].startswith("TRUE_"), ver[-1]

    # customConfig naming the user directly; an agent desktop listening on /verification since
    # before the call sees the results, the final one computed before `closed`.
    conv2 = str(uuid.uuid4())
    tok = await gw.token(conv2)
    listener = asyncio.create_task(sse_results(gw, tok))
    await asyncio.sleep(0.3)
    rep = await org.run(call_of(B, 0, 1, 2), None, conversation_id=conv2, custom_config={"userIds": ["cust-a"]})
    assert rep.ok, rep.summary()
    batches = await asyncio.wait_for(listener, 20)
    normal = [x for batch in batches for x in batch if x["result_type"] == "NORMAL"]
    assert normal and all(x["bio_result"].startswith("FALSE_") for x in normal), batches


async def sse_results(gw, token: str) -> list[list[dict]]:
    out = []
    async with gw.http.get(f"{gw.url}/verification", params={"users": "cust-a", "token": token}) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if isinstance(data, list):
                    out.append(data)
    return out


async def status_client(gw, token: str) -> tuple[socketio.AsyncClient, list]:
    """A Socket.IO client that asks only for `status` (as an agent desktop that shows the call)."""
    sio = socketio.AsyncClient(reconnection=False)
    got: list = []
    sio.on(f"verification-{token}", got.append, namespace=NAMESPACE)
    await sio.connect(gw.url, socketio_path=PATH, namespaces=[NAMESPACE], transports=["websocket"])
    ack = await sio.call("status", {"token": token, "users": "", "time": ""}, namespace=NAMESPACE, timeout=10)
    assert ack == {"ok": True}
    return sio, got


async def test_automatic_verification_reaches_every_agent_client(gateway):
    """Issue #11: the ANI's automatic verification reached the events but no agent client that
    had not asked for those users itself. Now a status-only Socket.IO client gets it live, a
    client joining after the call gets its result, and an SSE request for the same user joins it."""
    gw = gateway
    await enrol_a(gw)
    org = await org_for(gw)
    conv = str(uuid.uuid4())
    tok = await gw.token(conv)
    early, got = await status_client(gw, tok)
    try:
        rep = await org.run(call_of(A, 1, 2, 3), None, conversation_id=conv, ani="tel:555-1688")
        assert rep.ok, rep.summary()
        for _ in range(100):
            if any(r[0]["limitType"] == "NORMAL" for r in got):
                break
            await asyncio.sleep(0.05)
    finally:
        await early.disconnect()
    assert got and got[0][0]["limitType"] == "STARTING" and got[0][0]["bioUserId"] == "cust-a", got
    normal = [r[0] for r in got if r[0]["limitType"] == "NORMAL"]
    assert normal and normal[-1]["bioResult"].startswith("TRUE_"), got
    # After the call, an SSE request for the same user joins the automatic verification.
    batches = await asyncio.wait_for(sse_results(gw, tok), 20)
    assert [b[0]["result_type"] for b in batches] == ["STARTING", "NORMAL"], batches
    assert batches[-1][0]["bio_result"].startswith("TRUE_")
    late, got = await status_client(gw, tok)
    try:
        for _ in range(50):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await late.disconnect()
    assert [r[0]["limitType"] for r in got] == ["STARTING", "NORMAL"], got
    assert got[-1][0]["bioResult"].startswith("TRUE_")
