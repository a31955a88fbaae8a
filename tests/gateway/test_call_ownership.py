"""Who sees a call (issue #11, item 1): a call's owner (tenant, group, profile) is fixed by the
connector that carries its audio (here the direct stream's session) or by the first session
of its profile; every read, score and enrolment is scoped to the requesting token's profile.
Each case of the issue, reproduced with real clients: aiohttp requests, a websockets stream,
an SSE reader and a python-socketio client. The AudioHook cases: tests/audiohook/test_audiohook_ownership.py."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import socketio

from gateway.web.socketio import NAMESPACE, PATH
from gateway.web.appkeys import SERVICES
from support import admin, pat_of, protocol_audio, read_mulaw_bytes

P = "ls-other-tel"


def audio(*names: str) -> bytes:
    return b"".join(read_mulaw_bytes(protocol_audio(P, n)) for n in names)


async def other_group_pat(gw) -> str:
    """A PAT of group `vipdesk` (profile `vip`) in the same tenant as the gateway's default group."""
    return pat_of(await admin(gw.settings, "bootstrap", "--tenant", "acme", "--profile", "vip", "--group", "vipdesk"))


async def test_a_profile_scores_only_its_own_users_on_a_shared_master_id(gateway):
    gw = gateway
    await admin(gw.settings, "profile", "--tenant", "acme", "--name", "pb")      # same group as retail
    await gw.enrol("pa-user", audio("1688_enrol0"))

    # The call streams through profile retail (pa); a pb session names the same masterId.
    tok_pa, tok_pb = await gw.token("shared-1"), await gw.token("shared-1", profile="pb")
    await gw.stream(tok_pa, "shared-1", audio("1688_test1", "1688_test2"))
    assert (await gw.call("GET", "/users/info/pa-user", tok_pb))[1]["status"] == "NOT_ENROLLED"
    got = await gw.ondemand(tok_pb, "pa-user")
    # Before: TRUE_HIGH for a user pb's own /users/info calls NOT_ENROLLED.
    assert got["bio_result"] == "NOT_SCORED" and got["error_type"] == "NOT_ENROLLED", got
    assert (await gw.ondemand(tok_pa, "pa-user"))["bio_result"].startswith("TRUE_")

    # The reverse: pb touches the masterId first; pa's call must still score against pa.
    tok_pb2 = await gw.token("shared-2", profile="pb")
    assert (await gw.ondemand(tok_pb2, "pa-user"))["bio_result"] == "NOT_SCORED"
    tok_pa2 = await gw.token("shared-2")
    await gw.stream(tok_pa2, "shared-2", audio("1688_test1", "1688_test2"))
    got = await gw.ondemand(tok_pa2, "pa-user")
    assert got["bio_result"].startswith("TRUE_"), got          # before: NOT_SCORED against pb
    assert (await gw.ondemand(tok_pb2, "pa-user"))["speech_millis"] == 0   # pb's dialog got no audio


async def test_another_group_neither_reads_nor_enrols_a_call(gateway):
    gw = gateway
    pat_x = await other_group_pat(gw)
    await gw.enrol("cust-a", audio("1688_enrol0"))
    tok_real = await gw.token("call-1")
    tok_x = await gw.token("call-1", profile="vip", pat=pat_x)

    # The other group listens from before the call: SSE status, SSE verification, Socket.IO.
    seen: dict[str, list] = {"status": [], "verification": [], "sio": []}

    async def sse(path: str, params: dict, into: list) -> None:
        async with gw.http.get(f"{gw.url}{path}", params={"token": tok_x, **params},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    into.append(json.loads(line[5:]))

    sio = socketio.AsyncClient(reconnection=False)
    sio.on("*", lambda event, data=None: seen["sio"].append((event, data)), namespace=NAMESPACE)
    await sio.connect(gw.url, socketio_path=PATH, namespaces=[NAMESPACE], transports=["websocket"])
    listeners = [asyncio.create_task(sse("/dialog-status", {}, seen["status"])),
                 asyncio.create_task(sse("/verification", {"users": "cust-a"}, seen["verification"]))]
    try:
        ack = await sio.call("status", {"token": tok_x, "users": "", "time": ""}, namespace=NAMESPACE, timeout=10)
        assert ack == {"ok": True}
        for _ in range(50):
            if seen["status"] and seen["verification"]:
                break
            await asyncio.sleep(0.05)
        # The real call: the default group's agent streams and verifies.
        await gw.stream(tok_real, "call-1", audio("1688_test1", "1688_test2", "1688_test3"))
        assert (await gw.ondemand(tok_real, "cust-a"))["bio_result"].startswith("TRUE_")
        await asyncio.sleep(0.5)
    finally:
        await sio.disconnect()
        for t in listeners:
            t.cancel()
    # Before: BIO_ACTIVE and CALL_CLOSED of the real call, its clean speech and its scores.
    assert seen["status"] == [{"status": "CALL_OPENED"}], seen["status"]
    assert [r[0]["result_type"] for r in seen["verification"]] == ["STARTING"], seen["verification"]
    # Its Socket.IO client sees its own dialog only: open, and its own SSE request's STARTING.
    assert {e for e, _ in seen["sio"]} <= {f"status-{tok_x}", f"verification-{tok_x}"}, seen["sio"]
    assert all(d == {"status": "CALL_OPENED"} if e.startswith("status") else d[0]["limitType"] == "STARTING"
               for e, d in seen["sio"]), seen["sio"]
    assert (await gw.ondemand(tok_x, "cust-a"))["bio_result"] == "NOT_SCORED"
    # Before: 200, the real caller enrolled into the other group's profile.
    status, body = await gw.call("POST", "/enrol", tok_x, json={"user_id": "stolen"})
    assert status in (409, 422) and body["error"]["code"] in ("NO_AUDIO", "LOW_DATA"), body
    assert (await gw.call("GET", "/users/info/stolen", tok_x))[1]["status"] == "NOT_ENROLLED"


async def test_a_pre_created_dialog_cannot_lend_another_groups_voiceprint(gateway):
    """The impostor attack: group vipdesk pre-creates the masterId's dialog with one on-demand
    request and enrols its own "alice" with the impostor's voice; the real agent's call on that
    masterId then carries the impostor claiming to be alice. Before the fix it scored TRUE_HIGH
    against the other group's voiceprint; the same audio on a fresh dialog: FALSE."""
    gw = gateway
    pat_x = await other_group_pat(gw)
    await gw.enrol("alice", audio("1688_enrol0"))                               # the real alice
    await gw.enrol("alice", audio("1998_enrol0"), profile="vip", pat=pat_x)     # the impostor as "alice"
    tok_x = await gw.token("real-call", profile="vip", pat=pat_x)
    assert (await gw.ondemand(tok_x, "alice"))["bio_result"] == "NO_DATA"    # the dialog is pre-created

    tok_real = await gw.token("real-call")
    await gw.stream(tok_real, "real-call", audio("1998_test0", "1998_test1", "1998_test2"))
    got = await gw.ondemand(tok_real, "alice")
    assert got["bio_result"].startswith("FALSE_"), got
    assert (await gw.ondemand(tok_x, "alice"))["speech_millis"] == 0
    events = [json.loads(x) for x in (gw.settings.data_dir / "events.jsonl").read_text().splitlines()]
    ver = [e for e in events if e["message_type"] == "vb_verification" and e["dialog_id"] == "real-call"]
    assert ver and not any(e["verification_result"].startswith("TRUE_") for e in ver), ver
    assert {e["group_name"] for e in ver if e["verification_result"] != "NO_DATA"} == {"default"}


async def test_a_dialogs_owner_cannot_be_changed(gateway):
    gw = gateway
    await admin(gw.settings, "profile", "--tenant", "acme", "--name", "pb")
    tok = await gw.token("owned")
    await gw.ondemand(tok, "someone")
    core = gw.app[SERVICES]
    d = next(d for d in core.dialogs.all() if d.dialog_id == "owned")
    other = await core.store.get_profile(d.tenant_id, "pb")
    with pytest.raises(AttributeError):
        d.profile = other
    with pytest.raises(RuntimeError):
        d._claim(other)
    assert d.profile.name == "retail"
