"""REST surface: authentication, tenancy isolation, errors with stable codes, body limits,
OpenAPI, health and metrics."""
from __future__ import annotations

import json

from support import admin, pat_of, protocol_audio, read_mulaw_bytes


async def test_every_endpoint_authenticates(gateway):
    gw = gateway
    for method, path, kw in [("GET", "/users/info/u1", {}), ("POST", "/users/search", {"json": {"biokeys": []}}),
                             ("POST", "/enrol", {"json": {}}), ("POST", "/users/optout", {"json": {"user_id": "u"}}),
                             ("GET", "/verification/ondemand?users=u1", {}), ("GET", "/verification?users=u1", {}),
                             ("GET", "/dialog-status", {}), ("POST", "/api/token/", {"json": {}}),
                             ("GET", "/metrics", {})]:
        status, body = await gw.call(method, path, "not-a-token", **kw)
        assert status == 401, (path, body)
        assert body["error"]["code"] in ("UNAUTHORIZED", "TOKEN_EXPIRED"), body
    # A PAT is not a session token and vice versa.
    status, _ = await gw.call("GET", "/users/info/u1", gw.pat)
    assert status == 401
    tok = await gw.token("c1")
    status, _ = await gw.call("POST", "/api/token/", tok, json={})
    assert status == 401


async def test_tokens_reach_only_their_own_profile_and_tenant(gateway):
    gw = gateway
    s = gw.settings
    # A second profile in another group of the same tenant, and another tenant.
    other_group_pat = pat_of(await admin(s, "bootstrap", "--tenant", "acme", "--profile", "vip", "--group", "vipdesk"))
    other_tenant_pat = pat_of(await admin(s, "bootstrap", "--tenant", "globex", "--profile", "retail"))
    # PATs can't open sessions on profiles outside their group or tenant.
    for pat, tenant, profile, code in [(gw.pat, "acme", "vip", 404), (other_tenant_pat, "acme", "retail", 403),
                                       (gw.pat, "globex", "retail", 403)]:
        status, body = await gw.call("POST", "/api/token/", pat, json={
            "agentId": "a", "agentSkill": "s", "masterId": "m", "tenantId": tenant, "vbProfile": profile,
            "ccaasProvider": "GENESYS"})
        assert status == code, body
    # A user enrolled in acme/retail by batch enrolment is invisible elsewhere.
    wav = protocol_audio("ls-other-tel", "1688_enrol0").read_bytes()
    import aiohttp
    form = aiohttp.FormData()
    for k, v in {"tenant_id": "acme", "profile_id": "retail", "ccaas_provider": "GENESYS",
                 "biokeys[user_id]": "shared-id", "biokeys[Ani]": "777"}.items():
        form.add_field(k, v)
    form.add_field("file", wav, filename="rec.wav", content_type="audio/wav")
    status, body = await gw.call("POST", "/api/enroll", gw.pat, data=form)
    assert status == 200, body
    tok_retail = await gw.token("m1")
    tok_vip = await gw.token("m2", profile="vip", pat=other_group_pat)
    tok_globex = await gw.token("m3", tenant="globex", pat=other_tenant_pat)
    _, info = await gw.call("GET", "/users/info/shared-id", tok_retail)
    assert info["status"] == "ENROLLED"
    for tok in (tok_vip, tok_globex):
        _, info = await gw.call("GET", "/users/info/shared-id", tok)
        assert info["status"] == "NOT_ENROLLED"
        _, found = await gw.call("POST", "/users/search", tok, json={"biokeys": [{"key": "Ani", "value": "777"}]})
        assert found["response_status"] == "NOT_FOUND"
        _, v = await gw.call("GET", "/verification/ondemand", params={"users": "shared-id", "token": tok})
        assert v["bio_result"] == "NOT_SCORED"
        # Opting out in another tenant leaves acme's user untouched.
        status, _ = await gw.call("POST", "/users/optout", tok, json={"user_id": "shared-id"})
        assert status == 200
    _, info = await gw.call("GET", "/users/info/shared-id", tok_retail)
    assert info["status"] == "ENROLLED"
    # A dialog streamed in one tenant is not enrolable from another tenant's session with the same masterId.
    tok_g = await gw.token("m1", tenant="globex", pat=other_tenant_pat)
    status, body = await gw.call("POST", "/enrol", tok_g, json={"user_id": "x"})
    assert status == 409 and body["error"]["code"] == "NO_AUDIO"


async def test_bad_requests_get_stable_codes(gateway):
    gw = gateway
    tok = await gw.token("c2")
    cases = [
        ("POST", "/users/search", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
         "MALFORMED_JSON"),
        ("POST", "/users/search", {"json": {"biokeys": [{"key": "Ani"}]}}, 400, "VALIDATION_ERROR"),
        ("POST", "/users/search", {"json": {"biokeys": [{"key": "Ani", "value": "a b"}]}}, 400, "VALIDATION_ERROR"),
        ("POST", "/enrol", {"json": {"user_id": "u1"}}, 409, "NO_AUDIO"),
        ("POST", "/enrol", {"json": {}}, 400, "USER_ID_REQUIRED"),
        ("POST", "/enrol", {"json": {"user_id": "u1", "biokeys": [{"key": "Shoe", "value": "9"}]}}, 400,
         "UNKNOWN_BIOKEY"),
        ("POST", "/enrol", {"json": {"user_id": "u1", "biokeys": [{"key": "user_id", "value": "u2",
                                                                   "is_user_id": True}]}}, 400, "USER_ID_MISMATCH"),
        ("GET", "/verification/ondemand", {}, 400, "USERS_REQUIRED"),
        ("GET", "/verification/ondemand?users=a,b,c,d,e,f", {}, 400, "TOO_MANY_USERS"),
        ("GET", "/users/info/bad%20id", {}, 400, "BAD_USER_ID"),
        ("POST", "/users/search", {"json": {"biokeys": [{"key": "Ani", "value": "1"}], "x": "a" * 70000}}, 413,
         "BODY_TOO_LARGE"),
        ("GET", "/no/such/path", {}, 404, "NOT_FOUND"),
        ("DELETE", "/enrol", {}, 405, "METHOD_NOT_ALLOWED"),
    ]
    for method, path, kw, status, code in cases:
        got, body = await gw.call(method, path, tok, **kw)
        assert (got, body["error"]["code"]) == (status, code), (path, body)
        assert "Traceback" not in json.dumps(body)


async def test_low_data_enrolment_says_how_much_is_missing(gateway):
    gw = gateway
    from support import read_mulaw_bytes
    tok = await gw.token("short-call")
    await gw.stream(tok, "short-call", read_mulaw_bytes(protocol_audio("ls-other-tel2s", "1688_test0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": "shorty"})
    assert status == 422 and body["error"]["code"] == "LOW_DATA"
    assert "ms missing" in body["error"]["message"]
    _, info = await gw.call("GET", "/users/info/shorty", tok)
    assert info["status"] == "NOT_ENROLLED"


async def test_batch_enrol_rejects_bad_files(gateway):
    import aiohttp
    gw = gateway
    for filename, data, status, code in [("x.wav", b"RIFF....garbage", 415, "BAD_AUDIO"),
                                         ("x.mp4", b"\x00\x00\x00\x18ftypmp42", 415, "BAD_AUDIO"),
                                         ("x.ogg", b"OggS\x00\x02" + b"\x00" * 40, 415, "UNSUPPORTED_MEDIA")]:
        form = aiohttp.FormData()
        form.add_field("tenant_id", "acme")
        form.add_field("profile_id", "retail")
        form.add_field("biokeys[user_id]", "u9")
        form.add_field("file", data, filename=filename)
        got, body = await gw.call("POST", "/api/enroll", gw.pat, data=form)
        assert (got, body["error"]["code"]) == (status, code), body
    form = aiohttp.FormData()
    form.add_field("tenant_id", "acme")
    form.add_field("profile_id", "retail")
    form.add_field("file", b"RIFF", filename="x.wav")
    got, body = await gw.call("POST", "/api/enroll", gw.pat, data=form)
    assert (got, body["error"]["code"]) == (400, "USER_ID_REQUIRED")


async def test_openapi_health_ready_metrics(gateway):
    gw = gateway
    status, doc = await gw.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    for path in ("/api/token/", "/users/info/{userID}", "/users/search", "/enrol", "/users/optout",
                 "/verification/ondemand", "/api/enroll", "/agent-vb-mw/stream", "/dialog-status", "/verification"):
        assert path in doc["paths"], path
    assert "TokenRequest" in doc["components"]["schemas"]
    from openapi_spec_validator import validate
    validate(doc)
    assert (await gw.call("GET", "/healthz"))[0] == 200
    status, ready = await gw.call("GET", "/readyz")
    assert status == 200 and ready["checks"] == {"models": True, "database": True}
    mtok = (gw.settings.data_dir / "metrics.token").read_text().strip()
    status, text = await gw.call("GET", "/metrics", mtok)
    assert status == 200 and "vbgw_live_dialogs" in text and "vbgw_engine_queue_depth" in text


def _gauge(text: str, name: str) -> float:
    return float(next(line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(name + " ")))


async def test_metrics_count_the_audio_and_what_the_encoder_embedded(gateway):
    """vbgw_engine_audio_seconds (customer audio through the VAD) and
    vbgw_engine_encoder_audio_seconds (speech and its padding through the encoder) move with a
    call: their ratio is a call's encoder cost (docs/benchmarks.md)."""
    gw = gateway
    mtok = (gw.settings.data_dir / "metrics.token").read_text().strip()
    before = (await gw.call("GET", "/metrics", mtok))[1]
    payload = read_mulaw_bytes(protocol_audio("ls-other-tel", "1688_test0"))
    tok = await gw.token("metrics-call")
    await gw.stream(tok, "metrics-call", payload)
    await gw.ondemand(tok, "nobody")                 # embeds the whole call: its windows and the partial
    after = (await gw.call("GET", "/metrics", mtok))[1]
    audio = _gauge(after, "vbgw_engine_audio_seconds") - _gauge(before, "vbgw_engine_audio_seconds")
    enc = (_gauge(after, "vbgw_engine_encoder_audio_seconds")
           - _gauge(before, "vbgw_engine_encoder_audio_seconds"))
    sent = len(payload) / 8000
    assert sent - 0.1 <= audio <= sent + 0.01                # all of it through the VAD (whole 32 ms chunks)
    # a 4 s call embeds its EARLY partial, the window the first NORMAL cuts and the on-demand
    # partial: 6.3 s of encoder audio for 4.0 s of call here (long calls: ~0.6, docs/benchmarks.md)
    assert 0.3 * sent < enc <= 2.5 * sent, (audio, enc)
