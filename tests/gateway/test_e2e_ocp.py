"""End to end, as the issue states it: a real gateway on a socket, a PAT from `vbgw admin
bootstrap`, session tokens, real telephony speech streamed with the `websockets` client,
enrolment, verification of the same and of another speaker, then opt-out with no trace left."""
from __future__ import annotations

import json
import sqlite3

from support import protocol_audio, read_mulaw_bytes

P = "ls-other-tel"


async def test_enrol_verify_optout_end_to_end(gateway):
    gw = gateway
    # Session 1: speaker 1688 speaks; the agent enrols them.
    tok1 = await gw.token("call-1")
    msgs = await gw.stream(tok1, "call-1", read_mulaw_bytes(protocol_audio(P, "1688_enrol0")))
    assert msgs[0]["event"] == "session_started" and msgs[-1]["event"] == "session_ended"
    status, body = await gw.call("GET", "/users/info/cust-1688", tok1)
    assert (status, body["status"]) == (200, "NOT_ENROLLED")
    status, body = await gw.call("POST", "/enrol", tok1, json={
        "biokeys": [{"key": "user_id", "value": "cust-1688", "is_user_id": True},
                    {"key": "Ani", "value": "5551688", "is_user_id": False}],
        "user_id": "cust-1688"})
    assert (status, body) == (200, {"data": "Enroll user accepted"}), body
    status, body = await gw.call("GET", "/users/info/cust-1688", tok1)
    assert body["status"] == "ENROLLED" and body["last_update"] > 0

    # Session 2: the same speaker, other audio: a TRUE_* result.
    tok2 = await gw.token("call-2")
    await gw.stream(tok2, "call-2", read_mulaw_bytes(protocol_audio(P, "1688_test1")))
    status, same = await gw.call("GET", "/verification/ondemand", params={"users": "cust-1688", "token": tok2})
    assert status == 200, same
    assert same["bio_result"].startswith("TRUE_"), same
    assert same["bio_plain_user_id"] == "cust-1688" and len(same["bio_user_id"]) == 64
    assert same["speech_millis"] > 2000 and 0.5 < same["bio_score"] <= 1.0

    # Session 3: another speaker: a FALSE_* result.
    tok3 = await gw.token("call-3")
    await gw.stream(tok3, "call-3", read_mulaw_bytes(protocol_audio(P, "1998_test0")))
    status, other = await gw.call("GET", "/verification/ondemand", params={"users": "cust-1688", "token": tok3})
    assert other["bio_result"].startswith("FALSE_"), other
    assert other["bio_score"] < same["bio_score"]

    # Search by biokey finds the enrolled user.
    status, found = await gw.call("POST", "/users/search", tok2, json={"biokeys": [{"key": "Ani", "value": "5551688"}]})
    assert found["response_status"] == "FOUND_ONE" and found["users"][0]["user_id"] == "cust-1688"

    # Events: one vb_enrolment, vb_verification for each on-demand result, from real data.
    events = [json.loads(line) for line in (gw.settings.data_dir / "events.jsonl").read_text().splitlines()]
    enrol = [e for e in events if e["message_type"] == "vb_enrolment"]
    ver = [e for e in events if e["message_type"] == "vb_verification"]
    assert len(enrol) == 1 and enrol[0]["dialog_id"] == "call-1"
    assert enrol[0]["voiceprint"]["speech_frames"] >= 1000 and enrol[0]["voiceprint"]["model"]
    assert [v["verification_result"] for v in ver] == [same["bio_result"], other["bio_result"]]
    assert ver[0]["frame_count"] > 200 and ver[0]["voiceprint_ids"] == [enrol[0]["voiceprint"]["voiceprint_id"]]

    # The enrolment audio's fingerprint (landmark hashes, for replay detection) is kept...
    db = sqlite3.connect(gw.settings.sqlite_path)
    assert db.execute("SELECT count(*) FROM fingerprints WHERE kind='ENROL'").fetchone()[0] == 1
    db.close()

    # Opt-out: irrevocable; only the OPTED_OUT tombstone remains.
    status, body = await gw.call("POST", "/users/optout", tok2, json={"user_id": "cust-1688"})
    assert (status, body) == (200, {"data": "User opted-out"})
    status, info = await gw.call("GET", "/users/info/cust-1688", tok2)
    assert info["status"] == "OPTED_OUT" and info["opt_out_ts"] >= info["last_update"] - 1
    status, after = await gw.call("GET", "/verification/ondemand", params={"users": "cust-1688", "token": tok2})
    assert after["bio_result"] == "NOT_SCORED" and after["error_type"] == "OPTED_OUT"
    status, found = await gw.call("POST", "/users/search", tok2, json={"biokeys": [{"key": "Ani", "value": "5551688"}]})
    assert found["response_status"] == "NOT_FOUND"
    db = sqlite3.connect(gw.settings.sqlite_path)
    assert db.execute("SELECT count(*) FROM voiceprints").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM biokeys").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM audio").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM fingerprints").fetchone()[0] == 0     # ...until opt-out
    assert db.execute("SELECT status FROM users WHERE user_id='cust-1688'").fetchone()[0] == "OPTED_OUT"
    db.close()
    audio_dir = gw.settings.data_dir / "audio"
    assert not audio_dir.exists() or not any(p.is_file() for p in audio_dir.rglob("*"))

    # A later enrolment needs an explicit opt-in.
    tok4 = await gw.token("call-4")
    await gw.stream(tok4, "call-4", read_mulaw_bytes(protocol_audio(P, "1688_enrol1")))
    status, body = await gw.call("POST", "/enrol", tok4, json={"user_id": "cust-1688"})
    assert (status, body["error"]["code"]) == (409, "USER_OPTED_OUT")
    status, body = await gw.call("POST", "/enrol", tok4, json={"user_id": "cust-1688", "opt_in": True})
    assert status == 200, body
    status, info = await gw.call("GET", "/users/info/cust-1688", tok4)
    assert info["status"] == "ENROLLED" and info["opt_in_ts"] is not None
