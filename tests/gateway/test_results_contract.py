"""What integrators read (issue #11, items 3-5), with real clients: a repeated `users` parameter
is read whole, NOT_SCORED says why (OPTED_OUT, RE_ENROLL) in error_type and in the event's
fail_reason, and a voiceprint that could not be built still emits vb_enrolment with vp_fail."""
from __future__ import annotations

import json
import sqlite3

import aiohttp

from support import protocol_audio, read_mulaw_bytes

P = "ls-other-tel"


def audio(*names: str) -> bytes:
    return b"".join(read_mulaw_bytes(protocol_audio(P, n)) for n in names)


def events(gw, message_type: str) -> list[dict]:
    path = gw.settings.data_dir / "events.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["message_type"] == message_type]


async def enrol(gw, user_id: str, speaker: str) -> None:
    tok = await gw.token(f"enrol-{user_id}")
    await gw.stream(tok, f"enrol-{user_id}", audio(f"{speaker}_enrol0"))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": user_id})
    assert status == 200, body


async def test_repeated_users_are_all_verified(gateway):
    gw = gateway
    await enrol(gw, "genuine", "1688")
    await enrol(gw, "someone", "1998")
    tok = await gw.token("rep-1")
    await gw.stream(tok, "rep-1", audio("1688_test1", "1688_test2"))
    # The genuine caller listed second: before, only `someone` was scored (FALSE_HIGH).
    status, body = await gw.call("GET", "/verification/ondemand?users=someone&users=genuine", tok)
    assert status == 200 and body["bio_plain_user_id"] == "genuine" and body["bio_result"].startswith("TRUE_"), body
    status, body = await gw.call("GET", "/verification/ondemand?users=someone,genuine", tok)
    assert body["bio_plain_user_id"] == "genuine"
    status, body = await gw.call("GET", "/verification/ondemand?users=a&users=b,c&users=d,e&users=f", tok)
    assert status == 400 and body["error"]["code"] == "TOO_MANY_USERS"
    async with gw.http.get(f"{gw.url}/verification?users=someone&users=genuine&token={tok}",
                           timeout=aiohttp.ClientTimeout(total=10)) as r:
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                rows = json.loads(line[5:])
                if rows[0]["result_type"] != "STARTING":
                    break
    assert {x["bio_user_id"] for x in rows} == {"someone", "genuine"} and rows[0]["bio_user_id"] == "genuine", rows


async def test_not_scored_says_opted_out_and_re_enroll(gateway):
    gw = gateway
    await enrol(gw, "leaver", "1688")
    await enrol(gw, "old-model", "1998")
    tok = await gw.token("ns-1")
    status, _ = await gw.call("POST", "/users/optout", tok, json={"user_id": "leaver"})
    assert status == 200
    # A voiceprint of another speaker model, as `mark_re_enroll` finds it at start-up.
    db = sqlite3.connect(gw.settings.sqlite_path)
    db.execute("UPDATE voiceprints SET model='an-older-model' WHERE user_row IN "
               "(SELECT row_id FROM users WHERE user_id='old-model')")
    db.execute("UPDATE users SET status='RE_ENROLL' WHERE user_id='old-model'")
    db.commit()
    db.close()
    await gw.stream(tok, "ns-1", audio("1688_test1", "1688_test2"))
    for uid, why in (("leaver", "OPTED_OUT"), ("old-model", "RE_ENROLL"), ("stranger", "NOT_ENROLLED")):
        assert (await gw.call("GET", f"/users/info/{uid}", tok))[1]["status"] == why
        status, body = await gw.call("GET", "/verification/ondemand", tok, params={"users": uid})
        assert status == 200 and (body["bio_result"], body["error_type"]) == ("NOT_SCORED", why), body
        ev = events(gw, "vb_verification")[-1]
        assert ev["enrolled_user"]["user_id"] == uid and ev["fail_reason"] == why, ev


async def test_a_failed_voiceprint_build_emits_vb_enrolment_with_vp_fail(gateway):
    gw = gateway
    tok = await gw.token("short-1")
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": "early-bird"})
    assert status == 409 and body["error"]["code"] == "NO_AUDIO"
    await gw.stream(tok, "short-1", audio("1688_test1"))                      # 4 s: too little to enrol
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": "shorty",
                                                              "biokeys": [{"key": "Ani", "value": "555"}]})
    assert status == 422 and body["error"]["code"] == "LOW_DATA"
    fails = events(gw, "vb_enrolment")
    assert [(e["enrolled_user"]["user_id"], e["voiceprint"]["vp_fail"], e["voiceprint"]["vp_fail_reason"])
            for e in fails] == [("early-bird", True, "NO_AUDIO"), ("shorty", True, "LOW_DATA")], fails
    low = fails[-1]
    assert low["voiceprint"]["voiceprint_id"] is None and low["voiceprint"]["speech_frames"] > 0
    assert low["dialog_id"] == "short-1" and low["origin"] == "Agent Side" and low["session_id"]
    assert {"key": "Ani", "value": "555"} in low["biokeys"]
    assert low["enrolled_user"]["user_creation_ts"] is None                   # no user was created
    assert (await gw.call("GET", "/users/info/shorty", tok))[1]["status"] == "NOT_ENROLLED"
    # Batch enrolment of a short file: the same event, origin Batch.
    form = aiohttp.FormData()
    for k, v in {"tenant_id": "acme", "profile_id": "retail", "biokeys[user_id]": "batch-short"}.items():
        form.add_field(k, v)
    form.add_field("file", protocol_audio(P, "1998_test0").read_bytes(), filename="short.wav")
    status, body = await gw.call("POST", "/api/enroll", gw.pat, data=form)
    assert status == 422 and body["error"]["code"] == "LOW_DATA"
    last = events(gw, "vb_enrolment")[-1]
    assert last["enrolled_user"]["user_id"] == "batch-short" and last["origin"] == "Batch"
    assert last["voiceprint"]["vp_fail"] is True and last["voiceprint"]["vp_fail_reason"] == "LOW_DATA"
