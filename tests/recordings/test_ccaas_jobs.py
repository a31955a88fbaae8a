"""POST /api/enroll with ccaas_session_id: the recording is fetched from Genesys Cloud or NICE
CXone (local fakes speaking their APIs, fake_providers.py) as a job; 202, a status URL, and
the outcome there. Failures of the providers (401, 404, 429 with Retry-After, a recording
still being processed, a slow download, a redirect to a private address) end in a stable
code or a retry; a restart loses no job; tokens see only their own jobs."""
from __future__ import annotations

import asyncio
import time

from recording_audio import mp4_bytes, stereo_call, wav_bytes
from support import admin, pat_of
from test_batch_files import assert_caller_verifies, enroll

WAV = "audio/wav"
MP4 = "audio/mp4"


async def submit(gw, provider: str, session_id: str, user_id: str, token: str | None = None, **more):
    return await enroll(gw, None, token, ccaas_provider=provider, ccaas_session_id=session_id,
                        **{"biokeys[user_id]": user_id}, **more)


async def finished(gw, url: str, token: str | None = None, timeout_s: float = 120.0) -> dict:
    """Poll the job's status URL until it is SUCCEEDED or FAILED."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = await gw.call("GET", url, token or gw.pat)
        assert status == 200, body
        if body["status"] in ("SUCCEEDED", "FAILED"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job still {body['status']} after {timeout_s} s: {body}")


def genesys_call(genesys, cid: str) -> None:
    genesys.recordings[cid] = (wav_bytes(stereo_call(customer_side=0), 8000), WAV)


def nice_call(nice, sid: str) -> None:
    nice.recordings[sid] = (mp4_bytes(stereo_call(customer_side=1, rate=16000), 16000), MP4)


async def test_genesys_recording_is_fetched_after_processing_and_enrols(gateway, providers):
    gw = gateway
    genesys, _ = providers
    cid = "4f1c2e5a-8d3b-4c7e-9a10-2b3c4d5e6f70"
    genesys_call(genesys, cid)
    genesys.script[cid] = ["processing", "processing-retry:1"]         # 202, 202 + Retry-After: 1
    status, body = await submit(gw, "GENESYS", cid, "caller-genesys", **{"biokeys[Ani]": "+15550101"})
    assert status == 202 and body["status"] == "QUEUED" and body["data"] == "Enroll job accepted", body
    assert body["status_url"] == f"/api/enroll/jobs/{body['job_id']}"
    import jsonschema                              # the 202 is the one /openapi.json declares
    _, doc = await gw.call("GET", "/openapi.json")
    assert doc["paths"]["/api/enroll"]["post"]["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EnrolJobAccepted"}
    jsonschema.validate(body, doc["components"]["schemas"]["EnrolJobAccepted"])
    done = await finished(gw, body["status_url"])
    assert done["status"] == "SUCCEEDED" and done["error"] is None, done
    assert done["result"] == {"data": "Enroll user accepted", "user_id": "caller-genesys",
                              "speech_millis": done["result"]["speech_millis"]}
    assert done["result"]["speech_millis"] >= 10000 and done["attempts"] == 0      # polls are not attempts
    listing = genesys.calls("/recordings")
    assert len(listing) == 3 and listing[-1].at - listing[-2].at >= 0.95           # Retry-After honoured
    assert listing[0].query == {"maxWaitMs": "5000", "formatId": "WAV"}
    assert all(h.authorization.startswith("Bearer ") for h in listing)
    assert len(genesys.calls("/oauth/token")) == 1                                # the token is cached
    media = genesys.calls("/media/")
    assert len(media) == 1 and media[0].authorization is None                     # no credentials to storage
    await assert_caller_verifies(gw, "caller-genesys")
    ev = [e for e in map(__import__("json").loads, (gw.settings.data_dir / "events.jsonl").read_text().splitlines())
          if e["message_type"] == "vb_enrolment"][-1]
    assert ev["dialog_id"] == cid and ev["origin"] == "Batch" and ev["voiceprint"]["vp_fail"] is False


async def test_nice_recording_is_fetched_after_a_429_and_enrols(gateway, providers):
    gw = gateway
    _, nice = providers
    sid = "471348707611"
    nice_call(nice, sid)
    nice.script[sid] = ["429:1"]
    status, body = await submit(gw, "NICE_IN_CONTACT", sid, "caller-nice")
    assert status == 202, body
    done = await finished(gw, body["status_url"])
    assert done["status"] == "SUCCEEDED" and done["attempts"] == 1 and done["ccaas_provider"] == "NICE_IN_CONTACT"
    contacts = nice.calls("/media-playback/v1/contacts")
    assert len(contacts) == 2 and contacts[1].at - contacts[0].at >= 0.95
    assert contacts[0].query == {"acd-call-id": sid, "media-type": "voice-only", "exclude-waveforms": "true",
                                 "isDownload": "true"}
    await assert_caller_verifies(gw, "caller-nice")


async def test_nice_help_page_response_shape_is_read_too(gateway, providers):
    gw = gateway
    _, nice = providers
    nice_call(nice, "900000000001")
    nice.nice_shape["900000000001"] = "help-page"
    status, body = await submit(gw, "NICE", "900000000001", "shape-user")
    assert status == 202, body
    assert (await finished(gw, body["status_url"]))["status"] == "SUCCEEDED"


async def test_provider_failures_end_in_stable_codes(gateway, providers):
    gw = gateway
    genesys, nice = providers
    nice_call(nice, "100")
    nice.media_mode["100"] = "slow"                       # stalls past download_timeout_s, every attempt
    nice_call(nice, "101")
    nice.script["101"] = ["500", "500", "500"]            # max_attempts is 3 here
    nice_call(nice, "102")
    nice.media_mode["102"] = "redirect-private"           # storage redirects to 127.0.0.2
    genesys_call(genesys, "gone-1")
    genesys.script["gone-1"] = ["404"]
    cases = {"100": ("NICE", "RECORDING_DOWNLOAD_FAILED", 3), "101": ("NICE", "PROVIDER_UNAVAILABLE", 3),
             "102": ("NICE", "RECORDING_DOWNLOAD_REFUSED", 1), "no-such-call": ("GENESYS", "RECORDING_NOT_FOUND", 1),
             "gone-1": ("GENESYS", "RECORDING_NOT_FOUND", 1)}
    urls = {}
    for sid, (provider, _, _) in cases.items():
        status, body = await submit(gw, provider, sid, f"fail-{sid}")
        assert status == 202, body
        urls[sid] = body["status_url"]
    for sid, (_, code, attempts) in cases.items():
        done = await finished(gw, urls[sid])
        assert done["status"] == "FAILED" and done["error"]["code"] == code, (sid, done)
        assert done["attempts"] == attempts and done["result"] is None, (sid, done)
        assert "X-Amz-Signature" not in done["error"]["message"], done            # never the URL
    assert not nice.calls("/media/102.bin")                                       # never fetched there
    tok = await gw.token("fail-check")
    for sid in cases:
        assert (await gw.call("GET", f"/users/info/fail-{sid}", tok))[1]["status"] == "NOT_ENROLLED"


async def test_wrong_credentials_fail_without_retrying(gateway, providers):
    gw = gateway
    genesys, _ = providers
    genesys_call(genesys, "c-401")
    genesys.secret = "rotated-secret"                     # the configured secret is no longer valid
    status, body = await submit(gw, "GENESYS", "c-401", "u-401")
    done = await finished(gw, body["status_url"])
    assert done["error"]["code"] == "PROVIDER_AUTH_FAILED" and done["attempts"] == 1, done
    assert "rotated-secret" not in str(done) and len(genesys.calls("/oauth/token")) == 1
    logs = (gw.settings.data_dir / "events.jsonl").read_text()
    assert "rotated-secret" not in logs


async def test_a_revoked_token_is_renewed_once(gateway, providers):
    gw = gateway
    genesys, _ = providers
    genesys_call(genesys, "c-renew")
    genesys.script["c-renew"] = ["401"]                   # the cached token was revoked
    status, body = await submit(gw, "GENESYS", "c-renew", "u-renew")
    done = await finished(gw, body["status_url"])
    assert done["status"] == "SUCCEEDED" and done["attempts"] == 0, done
    assert len(genesys.calls("/oauth/token")) == 2


async def test_requests_that_cannot_become_jobs_are_refused_at_once(gateway, providers):
    gw = gateway
    other = pat_of(await admin(gw.settings, "bootstrap", "--tenant", "globex", "--profile", "retail"))
    cases = [({"ccaas_provider": "GENESYS", "ccaas_session_id": "c1"}, gw.pat, 400, "USER_ID_REQUIRED"),
             ({"ccaas_provider": "AVAYA", "ccaas_session_id": "c1", "biokeys[user_id]": "u"}, gw.pat, 400,
              "UNSUPPORTED_CCAAS_PROVIDER"),
             ({"ccaas_provider": "GENESYS", "ccaas_session_id": "../../etc", "biokeys[user_id]": "u"}, gw.pat, 400,
              "BAD_CCAAS_SESSION_ID"),
             ({"ccaas_provider": "GENESYS", "ccaas_session_id": "c1", "biokeys[user_id]": "u",
               "biokeys[shoe_size]": "44"}, gw.pat, 400, "UNKNOWN_BIOKEY"),
             ({"ccaas_provider": "NICE", "ccaas_session_id": "1", "biokeys[user_id]": "u", "tenant_id": "globex"},
              other, 501, "CCAAS_NOT_CONFIGURED")]
    for fields, pat, want, code in cases:
        status, body = await enroll(gw, None, pat=pat, **fields)
        assert (status, body["error"]["code"]) == (want, code), (fields, body)
    # an opted-out user is not queued
    status, body = await enroll(gw, (wav_bytes(stereo_call(0), 8000), "x.wav"), **{"biokeys[user_id]": "leaver"})
    assert status == 200, body
    tok = await gw.token("optout-call")
    assert (await gw.call("POST", "/users/optout", tok, json={"user_id": "leaver"}))[0] == 200
    status, body = await submit(gw, "GENESYS", "c1", "leaver")
    assert status == 409 and body["error"]["code"] == "USER_OPTED_OUT", body


async def test_a_resubmission_joins_the_unfinished_job(gateway, providers):
    gw = gateway
    _, nice = providers
    nice_call(nice, "555")
    nice.media_mode["555"] = "hang"
    _, first = await submit(gw, "NICE", "555", "dup-user")
    _, second = await submit(gw, "NICE", "555", "dup-user")
    assert second["job_id"] == first["job_id"]
    _, third = await submit(gw, "NICE", "555", "someone-else")
    assert third["job_id"] != first["job_id"]
    nice.release.set()
    assert (await finished(gw, first["status_url"]))["status"] == "SUCCEEDED"


async def test_a_token_sees_only_its_own_tenant_and_group_jobs(gateway, providers):
    gw = gateway
    genesys, _ = providers
    genesys_call(genesys, "c-own")
    status, body = await submit(gw, "GENESYS", "c-own", "own-user")
    url = body["status_url"]
    await finished(gw, url)
    s = gw.settings
    vip_pat = pat_of(await admin(s, "bootstrap", "--tenant", "acme", "--profile", "vip", "--group", "vipdesk"))
    globex_pat = pat_of(await admin(s, "bootstrap", "--tenant", "globex", "--profile", "retail"))
    same_profile = await gw.token("own-session")
    other_profile = await gw.token("vip-session", profile="vip", pat=vip_pat)
    for tok in (gw.pat, same_profile):
        status, seen = await gw.call("GET", url, tok)
        assert status == 200 and seen["job_id"] == body["job_id"], seen
    status, seen = await gw.call("GET", "/agent-vb-mw" + url, gw.pat)
    assert status == 200 and seen["status_url"] == "/agent-vb-mw" + url
    for tok in (vip_pat, globex_pat, other_profile):
        status, seen = await gw.call("GET", url, tok)
        assert status == 404 and seen["error"]["code"] == "JOB_NOT_FOUND", seen
    for tok in (None, "not-a-token"):
        status, seen = await gw.call("GET", url, tok)
        assert status == 401, seen
    status, seen = await gw.call("GET", "/api/enroll/jobs/job_" + "0" * 32, gw.pat)
    assert status == 404 and seen["error"]["code"] == "JOB_NOT_FOUND"
    # a session token submits for its own profile and sees the job
    status, mine = await submit(gw, "GENESYS", "c-own", "session-user", token=same_profile)
    assert status == 202 and (await gw.call("GET", mine["status_url"], same_profile))[0] == 200
