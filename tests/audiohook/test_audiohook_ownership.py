"""Who sees an AudioHook call (issue #11, item 1), through the AudioHook simulator and real
OCP clients: the AudioHook connector fixes the call's owner (customConfig `vbProfile`, else
the organisation's profile); an agent of that profile whose request comes before the stream
opens still sees the call; another group's pre-created dialog never lends its voiceprints; a
call whose organisation names no profile belongs to the first session that reaches it."""
from __future__ import annotations

import json
import uuid

import numpy as np
from audiohook_support import org_for, speech

from connectors.codecs import encode_mulaw
from support import admin, pat_of


def call_of(spk: str, *parts: int) -> np.ndarray:
    return np.concatenate([speech(f"{spk}_test{i}") for i in parts])


async def enrol(gw, user_id: str, speaker: str, profile: str = "retail", pat: str | None = None) -> None:
    await gw.enrol(user_id, encode_mulaw(speech(f"{speaker}_enrol0")), profile=profile, pat=pat)


def verifications(gw, conv: str) -> list[dict]:
    path = gw.settings.data_dir / "events.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines())
            if e["message_type"] == "vb_verification" and e["dialog_id"] == conv]


async def test_a_pre_created_dialog_of_another_group_is_not_the_audiohook_call(gateway):
    gw = gateway
    pat_x = pat_of(await admin(gw.settings, "bootstrap", "--tenant", "acme", "--profile", "vip", "--group", "vipdesk"))
    await enrol(gw, "alice", "1688")                                   # the real alice (retail)
    await enrol(gw, "alice", "1998", profile="vip", pat=pat_x)         # the impostor as the other group's alice
    org = await org_for(gw)                                            # the org's calls belong to retail
    conv = str(uuid.uuid4())
    tok_x = await gw.token(conv, profile="vip", pat=pat_x)
    assert (await gw.ondemand(tok_x, "alice"))["bio_result"] == "NO_DATA"       # pre-created
    # The impostor calls, claiming to be alice: the automatic verification (customConfig) and
    # the real agent's on-demand request score against retail's alice.
    rep = await org.run(call_of("1998", 0, 1, 2), None, conversation_id=conv, custom_config={"userIds": ["alice"]})
    assert rep.ok, rep.summary()
    scored = [e for e in verifications(gw, conv) if e["voiceprint_ids"]]
    assert scored and all(e["verification_result"].startswith("FALSE_") for e in scored), scored   # before: TRUE_HIGH
    got = await gw.ondemand(await gw.token(conv), "alice")
    assert got["bio_result"].startswith("FALSE_") and got["speech_millis"] > 3000, got
    assert (await gw.ondemand(tok_x, "alice"))["speech_millis"] == 0            # nothing reached vipdesk


async def test_an_agent_request_before_the_stream_opens_sees_the_call(gateway):
    gw = gateway
    await enrol(gw, "cust-a", "1688")
    org = await org_for(gw)
    conv = str(uuid.uuid4())
    tok = await gw.token(conv)
    assert (await gw.ondemand(tok, "cust-a"))["bio_result"] == "NO_DATA"        # before any audio
    rep = await org.run(call_of("1688", 1, 2, 3), None, conversation_id=conv)
    assert rep.ok, rep.summary()
    got = await gw.ondemand(tok, "cust-a")
    assert got["bio_result"].startswith("TRUE_") and got["speech_millis"] > 3000, got


async def test_a_call_without_a_profile_belongs_to_the_first_session_that_reaches_it(gateway):
    gw = gateway
    pat_x = pat_of(await admin(gw.settings, "bootstrap", "--tenant", "acme", "--profile", "vip", "--group", "vipdesk"))
    await enrol(gw, "cust-a", "1688")
    org = await org_for(gw, profile=None)

    # The stream first: unowned until retail's session reaches it; from then on it is retail's.
    conv = str(uuid.uuid4())
    rep = await org.run(call_of("1688", 1, 2, 3), None, conversation_id=conv)
    assert rep.ok, rep.summary()
    tok = await gw.token(conv)
    assert (await gw.ondemand(tok, "cust-a"))["bio_result"].startswith("TRUE_")
    tok_x = await gw.token(conv, profile="vip", pat=pat_x)
    assert (await gw.ondemand(tok_x, "cust-a"))["speech_millis"] == 0
    status, body = await gw.call("POST", "/enrol", tok_x, json={"user_id": "stolen"})
    assert status == 422 and body["error"]["code"] == "LOW_DATA", body

    # The session first (an agent's on-demand request): the stream joins that session's dialog.
    conv = str(uuid.uuid4())
    tok = await gw.token(conv)
    assert (await gw.ondemand(tok, "cust-a"))["bio_result"] == "NO_DATA"
    rep = await org.run(call_of("1688", 1, 2, 3), None, conversation_id=conv)
    assert rep.ok, rep.summary()
    assert (await gw.ondemand(tok, "cust-a"))["bio_result"].startswith("TRUE_")
