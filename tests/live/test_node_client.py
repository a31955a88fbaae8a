"""One end-to-end flow with Node's official socket.io-client (pinned in tests/live/node,
installed with `npm ci`): a live call paced 4x real time, status and verification pushes."""
from __future__ import annotations

from live_support import NodeScript, enrol, node_or_skip, paced_stream, speech


async def test_node_socketio_client_follows_a_live_call(gateway):
    node = node_or_skip()
    gw = gateway
    user = await enrol(gw)
    tok = await gw.token("node-1")
    script = NodeScript(node, "sio_flow.js", gw.url, tok, user)
    ready = await script.start()
    assert ready["acks"] == [{"ok": True}, {"ok": True}]
    await paced_stream(gw, tok, "node-1", speech("1688_enrol1"), speed=4.0)
    out = await script.result()
    assert out["why"] == "closed", out
    names = {e["event"] for e in out["events"]}
    # TTS-Detection: the live synthetic-speech detector's results (real speech here)
    assert names == {f"status-{tok}", f"verification-{tok}", f"clean-speech-{tok}", f"TTS-Detection-{tok}"}, names
    assert all(e["data"]["label"] == "No_TTS_Detected" for e in out["events"] if e["event"] == f"TTS-Detection-{tok}")
    statuses = [e["data"]["status"] for e in out["events"] if e["event"] == f"status-{tok}"]
    assert statuses == ["CALL_OPENED", "BIO_ACTIVE", "CALL_CLOSED"]
    results = [e["data"][0] for e in out["events"] if e["event"] == f"verification-{tok}"]
    assert [r["limitType"] for r in results][:2] == ["STARTING", "EARLY"]
    normal = [r for r in results if r["limitType"] == "NORMAL"]
    assert normal and normal[0]["bioResult"].startswith("TRUE_") and normal[0]["bioUserId"] == user
