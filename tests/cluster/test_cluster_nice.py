"""NICE CXone in shared mode (tests/cluster/cluster_support.py: two `vbgw serve` instances behind
haproxy, PostgreSQL, Redis, NATS): a business unit made with `vbgw nice add-bu` against the
shared store; a contact's TX and RX sockets (a real `websockets` client speaking as CXone's CAAE
app, tests/nice/nice_support.py) land on instance A with the script parameters docs/nice-cxone.md
describes (`Ani`, `vbgwToken`), while the agent's Socket.IO client, SSE readers, panel entry and
REST calls land on B. The caller, enrolled beforehand, is verified with no agent action on A and
the agent on B sees it; another profile's session on the contact sees nothing of it."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster_support import Cluster, cleanup, enrol_on_a_asked_on_b, events_of, logs_of, on, start_cluster, \
    stop_cluster, tmpdir
from live_support import Agent, SseReader, req
from support import REPO

sys.path.append(str(Path(__file__).resolve().parents[1] / "nice"))

from nice_support import A, B, Unit, speech  # noqa: E402

ANI = "+15551688"                      # the caller's number, normalised: the user id it is enrolled as
BANDS_TRUE = ("TRUE_HIGH", "TRUE_MEDIUM", "TRUE_LOW")
RESUME_S = 3.0                         # nice.resume_idle_s of the hold test's cluster (default 120)


@pytest.fixture
async def short_resume_cluster(throwaway_pg):
    tmp = tmpdir()
    try:
        c = await start_cluster(tmp, throwaway_pg.dsn, extra_env={"VBGW_NICE__RESUME_IDLE_S": str(RESUME_S)})
        try:
            yield c
        finally:
            await stop_cluster(c)
    finally:
        cleanup(tmp)


def add_bu(c: Cluster, bu_id: str = "4606881") -> dict[str, str]:
    """`vbgw nice add-bu` as an operator runs it, with the instances' settings (the shared
    PostgreSQL store): {endpoint, header, api_key} from its last three lines."""
    admin = c.tmp / "admin"
    admin.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "nice", "--data-dir", str(admin), "add-bu",
                          "--bu-id", bu_id, "--tenant", "acme", "--profile", "retail", "--public-host",
                          "vb.example.com"], cwd=REPO, env=c.a.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-3:]
    creds = dict(line.split("=", 1) for line in last)
    assert set(creds) == {"endpoint", "header", "api_key"}, out.stdout
    return creds


def unit_on(c: Cluster, creds: dict[str, str], route: str) -> Unit:
    """CXone's sockets through haproxy, sent to instance `route`."""
    endpoint = SimpleNamespace(ws_url=c.ws_url, settings=SimpleNamespace(nice=SimpleNamespace(path="/nice/ws")))
    return Unit(endpoint, creds["api_key"], creds["header"], headers=on(route))


async def nice_token(c: Cluster, contact: str, route: str, profile: str = "retail") -> str:
    """The session token a Studio REST API action gets for the contact (masterId = contact id)."""
    headers = {"Authorization": f"Bearer {c.pat}", **on(route)}
    async with c.http.post(f"{c.url}/api/token/", headers=headers, json={
            "agentId": "271828", "agentSkill": "voice", "masterId": contact, "tenantId": "acme",
            "vbProfile": profile, "ccaasProvider": "NICE_IN_CONTACT", "customProperties": {"Ani": ANI}}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["data"]["token"]


async def until_logged(inst, text: str, count: int = 1, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while inst.log().count(text) < count:
        assert time.monotonic() < deadline, f"{inst.name} never logged {text!r}: {inst.log()[-3000:]}"
        await asyncio.sleep(0.1)


async def test_nice_contact_on_a_agent_on_b(cluster):
    c = cluster
    unit = unit_on(c, add_bu(c), "a")
    await enrol_on_a_asked_on_b(c, user=ANI)              # speaker A (1688), user id = the caller's number
    contact = "700000001701"
    tok = await nice_token(c, contact, route="b")
    params = {"Ani": "+1 (555) 1688", "vbgwToken": tok}   # Studio's customPayload.asJSON()
    # The contact (speaker A) on TX and the agent (speaker B) on RX, both on A, in real time x4.
    tx = asyncio.create_task(unit.stream("TX", contact, speech(f"{A}_test0", f"{A}_test1", f"{A}_test2"), params,
                                         end="stop", speed=4))
    rx = asyncio.create_task(unit.stream("RX", contact, speech(f"{B}_test0"), params, end="stop", speed=4))
    agent = await Agent().connect(c, headers=on("b"))
    try:
        await until_logged(c.a, "nice_verification_started")     # the call is open on A, verified from Ani
        assert await agent.ask("status", req(tok)) == {"ok": True}
        async with c.open_sse("b", "/dialog-status", tok) as status_resp, \
                c.open_sse("b", "/verification", tok, users=ANI) as ver_resp:
            assert status_resp.status == 200 and ver_resp.status == 200
            statuses, verification = SseReader(status_resp), SseReader(ver_resp)
            seen_tx, seen_rx = await asyncio.gather(tx, rx)
            status_events = await statuses.rest(timeout=40)
            ver_events = await verification.rest(timeout=40)
        assert seen_tx.ack["status"] == "ok" and seen_rx.ack["status"] == "ok", (seen_tx, seen_rx)
        assert seen_tx.messages == [{"status": "ended", "contactId": contact}] and seen_tx.close_code == 1000
        seen = [e["data"].get("status") for e in status_events if "event" not in e]
        assert "BIO_ACTIVE" in seen and seen[-1] == "CALL_CLOSED", (seen, logs_of(c))
        rows = [row for e in ver_events if isinstance(e["data"], list) for row in e["data"]]
        normal = [r for r in rows if r["result_type"] == "NORMAL"]
        assert normal and normal[-1]["bio_result"] in BANDS_TRUE and normal[-1]["bio_user_id"] == ANI, (rows, logs_of(c))
        # Socket.IO on B: the automatic verification's results, published on A
        await agent.wait(lambda ev: any(r["limitType"] == "NORMAL" for batch in ev[f"verification-{tok}"]
                                        for r in batch), timeout=40)
        sio = [r for batch in agent.events[f"verification-{tok}"] for r in batch]
        sio_normal = [r for r in sio if r["limitType"] == "NORMAL"]
        assert sio_normal[-1]["bioResult"] in BANDS_TRUE and sio_normal[-1]["bioUserId"] == ANI, sio
        assert all("mixed" not in r for r in sio)
    finally:
        await agent.close()
        for t in (tx, rx):
            if not t.done():
                t.cancel()
    # the contact's sockets were served by A only; B served the agent
    assert c.a.log().count("nice_stream_started") == 2 and "nice_stream_started" not in c.b.log()

    # the agent panel's entry on B (CXone's App URL with {scriptparams}) hands the token to the widget
    async with c.http.get(f"{c.url}/nice/agent", params={"params": f'{{"Ani":"+1 (555) 1688","vbgwToken":"{tok}"}}'},
                          headers=on("b"), allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"].startswith("/agent?token="), r.status
        assert "users=%2B15551688" in r.headers["Location"]

    # REST on B reaches the contact's audio on A; the speech is the TX side's alone
    status, od = await c.call("b", "GET", "/verification/ondemand", tok, params={"users": ANI})
    assert status == 200 and od["bio_result"] in BANDS_TRUE and od["speech_millis"] > 5000, od
    # the ownership rule across instances: another profile's session on the same contact id gets
    # a dialog of its own, with none of the contact's audio
    other = await nice_token(c, contact, route="b", profile="other")
    status, od = await c.call("b", "GET", "/verification/ondemand", other, params={"users": ANI})
    assert status == 200 and not od["bio_result"].startswith("TRUE_") and od["speech_millis"] == 0, od

    # the automatic verification's event, in JetStream, with the contact id as the dialog id
    msgs = events_of(await c.jetstream(min_count=2))
    # (the other profile's on-demand verification above has an event too, NOT_SCORED, and the
    # two instances' events reach the stream in either order: look for the caller's, not the last)
    ver = [e for t, e, _ in msgs if t == "vb_verification" and e["dialog_id"] == contact]
    assert any(e["verification_result"] in BANDS_TRUE for e in ver), msgs


async def test_a_contacts_rx_socket_landing_on_the_other_instance_is_refused(cluster):
    """Behind a load balancer without affinity, CXone's TX socket of a contact may land on A and
    its RX socket on B. The contact's call stays whole where its first socket landed: the RX
    socket on B is refused (STREAM_BUSY, 1013: CXone may retry) instead of making a second,
    agent-only call on B that would take the contact's directory entry, and the agent on B
    sees the TX side's verification."""
    c = cluster
    creds = add_bu(c)
    on_a, on_b = unit_on(c, creds, "a"), unit_on(c, creds, "b")
    await enrol_on_a_asked_on_b(c, user=ANI)
    contact = "700000001702"
    tok = await nice_token(c, contact, route="b")
    params = {"Ani": ANI, "vbgwToken": tok}
    tx = asyncio.create_task(on_a.stream("TX", contact, speech(f"{A}_test0", f"{A}_test1", f"{A}_test2"), params,
                                         end="stop", speed=4))
    agent = await Agent().connect(c, headers=on("b"))
    try:
        await until_logged(c.a, "nice_verification_started")
        rx = await on_b.stream("RX", contact, speech(f"{B}_test0"), params, end="stop", speed=4)
        assert await agent.ask("status", req(tok)) == {"ok": True}
        await agent.wait(lambda ev: any(r["limitType"] == "NORMAL" for batch in ev[f"verification-{tok}"]
                                        for r in batch), timeout=40)
        sio = [r for batch in agent.events[f"verification-{tok}"] for r in batch if r["limitType"] == "NORMAL"]
        assert sio[-1]["bioResult"] in BANDS_TRUE, (sio, logs_of(c))
        await tx
    finally:
        await agent.close()
        if not tx.done():
            tx.cancel()
    assert rx.ack["status"] == "error" and rx.ack["error"]["code"] == "STREAM_BUSY" and rx.close_code == 1013, rx
    assert "nice_contact_elsewhere" in c.b.log() and "nice_stream_started" not in c.b.log()
    status, od = await c.call("b", "GET", "/verification/ondemand", tok, params={"users": ANI})
    assert status == 200 and od["bio_result"] in BANDS_TRUE and od["speech_millis"] > 5000, od


async def test_hold_on_a_resumed_on_b_is_a_new_call_there(short_resume_cluster):
    """A hold closes the contact's sockets; the resumed ones may land on the other instance.
    No socket is open on A then, so B takes the call: a new dialog there, verified again from
    the script parameters on the speech after the hold only (audio state is not moved between
    instances). A's part ends after the resume window with its CALL_CLOSED, which the agent's
    open connection on B sees; the agent's next request follows the call on B."""
    c = short_resume_cluster
    creds = add_bu(c)
    on_a, on_b = unit_on(c, creds, "a"), unit_on(c, creds, "b")
    await enrol_on_a_asked_on_b(c, user=ANI)
    contact = "700000001703"
    tok = await nice_token(c, contact, route="b")
    params = {"Ani": ANI, "vbgwToken": tok}
    after_hold = speech(f"{A}_test2", f"{A}_test3", f"{A}_test4")
    agent = await Agent().connect(c, headers=on("b"))
    try:
        before = asyncio.gather(on_a.stream("TX", contact, speech(f"{A}_test0", f"{A}_test1"), params, speed=4),
                                on_a.stream("RX", contact, speech(f"{B}_test0"), params, speed=4))
        await until_logged(c.a, "nice_verification_started")
        assert await agent.ask("status", req(tok)) == {"ok": True}          # following the call on A
        await before                                                       # hold: CXone closes both
        tx, rx = await asyncio.gather(on_b.stream("TX", contact, after_hold, params, end="stop", speed=4),
                                      on_b.stream("RX", contact, speech(f"{B}_test1"), params, end="stop", speed=4))
        assert tx.ack["status"] == "ok" and rx.ack["status"] == "ok", (tx, rx)       # not refused: on hold on A
        assert tx.messages == [{"status": "ended", "contactId": contact}]
        # the agent's open connection sees A's part end once its resume window has passed
        await agent.wait(lambda ev: {"status": "CALL_CLOSED"} in ev[f"status-{tok}"], timeout=RESUME_S + 30)
        # its next request follows the call on B
        assert await agent.ask("status", req(tok)) == {"ok": True}
    finally:
        await agent.close()
    assert "nice_contact_elsewhere" not in c.b.log(), logs_of(c)
    assert c.b.log().count("nice_stream_started") == 2 and "nice_verification_started" in c.b.log()
    status, od = await c.call("b", "GET", "/verification/ondemand", tok, params={"users": ANI})
    assert status == 200 and od["bio_result"] in BANDS_TRUE, od
    # B's call holds the speech after the hold only
    assert 0 < od["speech_millis"] <= len(after_hold) / 8, (od, len(after_hold) / 8)
