"""The Aculab-style Users API through a real gateway with the real engine: register, exists,
stats, update, verify (same and other speaker), PAD TypeA/TypeB from stored fingerprints,
events, and delete leaving no trace; then the one-time WebSocket form."""
from __future__ import annotations

import json
import re
import sqlite3

from yarl import URL

from aculab_support import DATE_RE, USERS, Client, assert_error, sources, user_group_key, wav_file

UID = "Bob.1688-x"        # "." is allowed by the seed (not by OCP biokeys)


def _rows(db_path, sql: str, *args) -> list:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


async def test_register_verify_update_stats_delete(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))

    status, body = await cl.call("GET", "exists", params={"user_id": UID})
    assert_error(status, body, 404, "NOT_REGISTERED", "exists")           # issue #16 item 6: the document's 404

    status, reg = await cl.put("register", UID, wav_file("1688_enrol0"))
    assert status == 200, reg
    assert set(reg) == {"application_instance_id", "transaction_id"}
    assert re.fullmatch(r"vb-[0-9a-f]{20}\.000001", reg["application_instance_id"])
    assert re.fullmatch(r"[0-9a-f]{32}", reg["transaction_id"])

    status, body = await cl.call("POST", "exists", data={"user_id": UID})    # POST form parameters
    assert (status, body["exists"]) == (200, True), body
    assert_error(*await cl.put("register", UID, wav_file("1688_enrol1")), 400, "USER_EXISTS", "register")
    status, body = await cl.put("register", UID, wav_file("1688_enrol1"))
    assert body["error"]["text"] == f"Bad Request: user_id '{UID}' is already present"

    status, st = await cl.call("GET", "stats", params={"user_id": UID})
    assert status == 200, st
    assert st["user_group_name"] == "retail" and DATE_RE.match(st["registration_date"])
    assert DATE_RE.match(st["update_date"]) and st["verification_date"] is None   # issue #16 item 6: null, not ""
    assert (st["verification_attempts"], st["verifications_passed"], st["verifications_failed"]) == (0, 0, 0)

    status, upd = await cl.call("POST", "update", params={"user_id": UID},
                                data=sources(("Source1", wav_file("1688_enrol1"))))
    assert status == 200, upd
    assert upd["sources"] == [{"source": "Source1", "accepted": True}]

    status, same = await cl.put("verify", UID, wav_file("1688_test1"), text_dependent="false")
    assert status == 200, same
    assert same["verified"] is True and same["confidence"] >= 1.0 and "pad_detected" not in same
    assert set(same) == {"application_instance_id", "transaction_id", "verified", "confidence"}
    status, other = await cl.put("verify", UID, wav_file("1998_test0"), text_dependent="false")
    assert status == 200, other
    assert other["verified"] is False and 0 < other["confidence"] < 1.0

    # (These recordings are different sentences: text independent. Text dependent: test_text_dependent.py.)
    # The same file again is duplicate audio (TypeA); the verdict itself is unchanged by PAD.
    status, again = await cl.put("verify", UID, wav_file("1688_test1"), text_dependent="false", enable_pad="true")
    assert status == 200, again
    assert again["pad_detected"] == {"type": "TypeA"}
    assert again["verified"] is True and again["confidence"] == same["confidence"]
    # A fresh recording of the same speaker is not an attack.
    status, fresh = await cl.put("verify", UID, wav_file("1688_test2"), text_dependent="false", enable_pad="true")
    assert status == 200 and fresh["verified"] is True and "pad_detected" not in fresh, fresh
    # The registration audio played back is a replayed recording (TypeB).
    status, replay = await cl.put("verify", UID, wav_file("1688_enrol0"), text_dependent="false", enable_pad="true")
    assert status == 200 and replay["pad_detected"] == {"type": "TypeB"}, replay
    # Sensitivity moves the thresholds by that many llr units: +10 asks for e^10 times more
    # evidence, so the confidence falls by 2^(10 / (TRUE_HIGH - TRUE_LOW)) (4.8 with the defaults).
    status, strict = await cl.put("verify", UID, wav_file("1688_test2"), text_dependent="false", sensitivity="10")
    assert status == 200 and strict["confidence"] < fresh["confidence"] / 3, (strict, fresh)
    status, lax = await cl.put("verify", UID, wav_file("1998_test0"), text_dependent="false", sensitivity="-10.0")
    assert status == 200 and lax["confidence"] > other["confidence"] * 3, (lax, other)

    status, st = await cl.call("POST", "stats", params={"user_id": UID})
    assert (st["verification_attempts"], st["verifications_passed"], st["verifications_failed"]) == (7, 4 + strict["verified"] + lax["verified"], 3 - strict["verified"] - lax["verified"]), st
    assert DATE_RE.match(st["verification_date"])

    # Events: as the OCP paths emit them, marked with this API as their origin.
    events = [json.loads(line) for line in (gw.settings.data_dir / "events.jsonl").read_text().splitlines()]
    enrol = [e for e in events if e["message_type"] == "vb_enrolment"]
    ver = [e for e in events if e["message_type"] == "vb_verification"]
    assert [e["dialog_id"] for e in enrol] == [reg["application_instance_id"], upd["application_instance_id"]]
    assert {e["origin"] for e in enrol} == {"Aculab Users API"} and enrol[0]["enrolled_user"]["user_id"] == UID
    assert len(ver) == 7 and {e["verification_origin"] for e in ver} == {"Aculab Users API"}
    assert ver[0]["dialog_id"] == same["application_instance_id"]
    assert ver[0]["verification_result"].startswith("TRUE_") and ver[1]["verification_result"].startswith("FALSE_")

    db = gw.settings.sqlite_path
    (row,) = _rows(db, "SELECT row_id FROM users WHERE user_id=?", UID)
    kinds = sorted(k for (k,) in _rows(db, "SELECT kind FROM fingerprints WHERE user_row=?", row[0]))
    assert kinds == ["ENROL", "ENROL"] + ["VERIFY"] * 7

    assert _rows(db, "SELECT count(*) FROM passphrases WHERE user_row=?", row[0]) == [(1,)]   # purged below
    status, gone = await cl.call("GET", "delete", params={"user_id": UID})
    assert status == 200 and gone["user_id"] == UID and DATE_RE.match(gone["deleted"]), gone
    for table in ("voiceprints", "biokeys", "fingerprints", "audio", "verification_stats", "passphrases"):
        assert _rows(db, f"SELECT count(*) FROM {table} WHERE user_row=?", row[0]) == [(0,)], table
    assert_error(*await cl.call("GET", "exists", params={"user_id": UID}), 404, "NOT_REGISTERED", "exists")
    assert_error(*await cl.call("GET", "stats", params={"user_id": UID}), 404, "NOT_REGISTERED", "stats")
    assert_error(*await cl.call("POST", "delete", params={"user_id": UID}), 404, "NOT_REGISTERED", "delete")
    status, body = await cl.put("verify", UID, wav_file("1688_test1"))
    assert_error(status, body, 400, "USER_NOT_FOUND", "verify")
    assert body["error"]["text"] == f"Bad Request: user_id '{UID}' not found"
    assert_error(*await cl.put("update", UID, wav_file("1688_enrol1")), 400, "USER_NOT_FOUND", "update")

    # Registering again is an explicit new registration with the user's consent (issue #16 item 8:
    # a delete is an opt-out): it starts from nothing.
    status, reg2 = await cl.call("POST", "register", params={"user_id": UID, "opt_in": "true"},
                                 data=sources(("Source1", wav_file("1688_enrol1")), ("Source2", b"not a wav")))
    assert status == 200, reg2
    assert reg2["sources"] == [{"source": "Source1", "accepted": True}, {"source": "Source2", "accepted": False}]
    status, st = await cl.call("GET", "stats", params={"user_id": UID})
    assert st["verification_attempts"] == 0 and st["verification_date"] is None, st
    status, multi = await cl.call("POST", "verify", params={"user_id": UID, "text_dependent": "false",
                                                            "enable_pad": "true"},
                                  data=sources(("Source1", wav_file("1688_test1")), ("Source2", wav_file("1688_test2"))))
    assert status == 200, multi
    assert multi["verified"] is True and "pad_detected" not in multi   # earlier fingerprints went with the delete
    assert multi["sources"] == [{"source": "Source1", "accepted": True}, {"source": "Source2", "accepted": True}]


async def test_websocket_register_and_verify(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    status, got = await cl.call("GET", "register", params={"user_id": "ws-user", "stream_type": "file"})
    assert status == 200 and set(got) == {"application_instance_id", "url"}, got
    assert got["url"].startswith("ws://127.0.0.1:") and "/voice_biometrics/v1/wss/register?auth_token=" in got["url"]
    audio = wav_file("1688_enrol0")
    async with gw.http.ws_connect(got["url"]) as ws:
        for i in range(0, len(audio), 32000):
            await ws.send_bytes(audio[i:i + 32000])
        await ws.send_json({"event": "audio_sent"})
        reply = await ws.receive_json()
    assert reply["event"] == "register" and reply["user_id"] == "ws-user" and len(reply["transaction_id"]) == 32
    status, body = await cl.call("GET", "exists", params={"user_id": "ws-user"})
    assert body["exists"] is True

    # The URL is single use.
    status, body = await gw.call("GET", URL(got["url"]).path_qs)
    assert_error(status, body, 401, "UNAUTHORIZED", "register")

    status, got = await cl.call("GET", "verify", params={"user_id": "ws-user", "enable_pad": "true",
                                                         "text_dependent": "false"})
    assert status == 200, got
    async with gw.http.ws_connect(got["url"]) as ws:
        await ws.send_bytes(wav_file("1688_test1"))
        await ws.send_json({"event": "audio_sent"})
        reply = await ws.receive_json()
    assert reply["event"] == "verify" and reply["verified"] is True and reply["confidence"] >= 1.0, reply
    assert "pad_detected" not in reply

    # Errors come back as a reject event.
    status, got = await cl.call("GET", "update", params={"user_id": "nobody"})
    async with gw.http.ws_connect(got["url"]) as ws:
        await ws.send_bytes(wav_file("1688_test1"))
        await ws.send_json({"event": "audio_sent"})
        reply = await ws.receive_json()
    assert reply == {"event": "reject", "reason": "Bad Request", "vbgw_code": "USER_NOT_FOUND",
                     "message": "Bad API request, update: user_id 'nobody' not found", "code": 50}   # issue #16 item 4
    status, body = await cl.call("GET", "verify", params={"user_id": "ws-user", "stream_type": "realtime"})
    assert_error(status, body, 400, "BAD_PARAMETER", "verify")


async def test_openapi_lists_the_users_api(gateway):
    status, doc = await gateway.call("GET", "/openapi.json")
    assert status == 200
    ops = doc["paths"][f"{USERS}/verify"]
    assert set(ops) == {"put", "post", "get"}
    assert ops["put"]["security"] == [{"user_group_key": []}]
    params = {p["name"]: p["required"] for p in ops["put"]["parameters"]}
    assert params == {"user_id": True, "sensitivity": False, "text_dependent": False, "enable_pad": False,
                      "wav_file_url": False}
    assert "wav_file_url" not in {p["name"] for p in doc["paths"][f"{USERS}/register"]["put"]["parameters"]}
    assert "wav_file_url" in {p["name"] for p in doc["paths"][f"{USERS}/register"]["post"]["parameters"]}
    assert "AculabErrorResponse" in doc["components"]["schemas"]
    from openapi_spec_validator import validate
    validate(doc)
