"""Operator tools against a real gateway (issue #10, section 5): `vbgw stream` prints results
as they arrive and names the cause of a failure; PATs and user group keys can be listed (never
the secret) and revoked, and a revoked one is refused at once."""
from __future__ import annotations

import asyncio
import base64
import socket

from gateway.cli import main as cli
from gateway.services.auth import token_hash
from support import admin, pat_of, protocol_audio, read_mulaw_bytes

P = "ls-other-tel"


async def _enrol(gw, user: str = "cust-1") -> None:
    tok = await gw.token("enrol-call")
    await gw.stream(tok, "enrol-call", read_mulaw_bytes(protocol_audio(P, "1688_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": user})
    assert status == 200, body


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def test_stream_prints_statuses_and_results_as_they_arrive(gateway, capsys):
    gw = gateway
    await _enrol(gw)
    wav = str(protocol_audio(P, "1688_test1"))
    assert await _cli("stream", wav, "--url", gw.url, "--pat", gw.pat, "--tenant", "acme", "--profile", "retail",
                      "--users", "cust-1", "--fast") == 0
    lines = capsys.readouterr().out.splitlines()
    order = [next(i for i, ln in enumerate(lines) if ln.startswith(p)) for p in (
        "status: CALL_OPENED", "verification: cust-1: STARTING", "stream: session_started", "stream: session_ended",
        "status: CALL_CLOSED", "result: cust-1: TRUE_")]
    assert order == sorted(order), lines
    scored = [ln for ln in lines if ln.startswith("verification: cust-1: TRUE_")]
    assert scored and "score" in scored[0] and "s of speech" in scored[0], lines

    # With a token made elsewhere (the README's curl), for another speaker.
    tok = await gw.token("readme-call")
    assert await _cli("stream", str(protocol_audio(P, "1998_test0")), "--url", gw.url, "--token", tok,
                      "--dialog-id", "readme-call", "--users", "cust-1", "--fast") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("result: cust-1: FALSE_")


async def test_stream_errors_name_the_cause(gateway, tmp_path, capsys):
    gw = gateway
    wav = str(protocol_audio(P, "1688_test0"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    tok = await gw.token("err-call")
    cases = [
        (["stream", str(tmp_path / "none.wav"), "--token", tok, "--dialog-id", "x"], "no such file"),
        (["stream", str(tmp_path), "--token", tok, "--dialog-id", "x"], "no such file"),
        (["stream", wav, "--url", gw.url, "--token", "not-a-token", "--dialog-id", "x"], "(401)"),
        (["stream", wav, "--url", f"http://127.0.0.1:{closed_port}", "--token", tok, "--dialog-id", "x"],
         "connection refused"),
        (["stream", wav, "--url", gw.url, "--token", tok, "--dialog-id", "another-call"], "DIALOG_MISMATCH"),
        (["stream", wav, "--url", gw.url, "--token", tok], "--dialog-id is required"),
    ]
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    cases.append((["stream", str(tmp_path / "junk.wav"), "--token", tok, "--dialog-id", "x"], "cannot read"))
    for argv, cause in cases:
        assert await _cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert cause in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


async def test_pats_are_listed_without_secrets_and_revoked(gateway, capsys):
    gw = gateway
    second = pat_of(await admin(gw.settings, "pat", "--tenant", "acme", "--pat-name", "crm"))
    listing = await admin(gw.settings, "pats")
    rows = [ln.split("\t") for ln in listing.strip().splitlines()]
    assert rows[0] == ["id", "status", "created", "tenant", "group", "name"]
    assert [(r[1], r[3], r[4], r[5]) for r in rows[1:]] == [("active", "acme", "default", "bootstrap"),
                                                             ("active", "acme", "default", "crm")]
    for secret in (gw.pat, second):
        assert secret not in listing and token_hash(secret) not in listing
    crm_id = rows[2][0]
    out = await admin(gw.settings, "revoke-pat", crm_id)
    assert f"revoked personal access token {crm_id}" in out
    status, body = await gw.call("POST", "/api/token/", headers={"Authorization": f"Bearer {second}"}, json={
        "agentId": "a", "agentSkill": "s", "masterId": "m", "tenantId": "acme", "vbProfile": "retail",
        "ccaasProvider": "GENESYS"})
    assert status == 401, body
    assert "\trevoked\t" in (await admin(gw.settings, "pats", "--tenant", "acme")).splitlines()[2]
    assert await gw.token("still-works")              # the other PAT is untouched
    assert await _cli("admin", "--data-dir", str(gw.settings.data_dir), "revoke-pat", "pat_nope") == 2
    assert "no personal access token 'pat_nope'" in capsys.readouterr().err


async def test_user_group_keys_are_listed_without_secrets_and_revoked(gateway, capsys):
    gw = gateway
    out = await admin(gw.settings, "user-group-key", "--tenant", "acme", "--profile", "retail", "--key-name", "ivr")
    key = out.strip().splitlines()[-1].removeprefix("key=")
    auth = {"Authorization": "Basic " + base64.b64encode(f"acme/bob:{key}".encode()).decode()}
    status, body = await gw.call("GET", "/voice_biometrics/v1/user/exists", params={"user_id": "nobody"}, headers=auth)
    assert status == 404 and body["error"]["vbgw_code"] == "NOT_REGISTERED"     # the key works (issue #16: 404)
    listing = await admin(gw.settings, "user-group-keys")
    assert key not in listing and token_hash(key) not in listing
    rows = [ln.split("\t") for ln in listing.strip().splitlines()]
    assert rows[0][-2:] == ["profile", "name"] and rows[1][1] == "active" and rows[1][-2:] == ["retail", "ivr"]
    await admin(gw.settings, "revoke-user-group-key", rows[1][0])
    status, _ = await gw.call("GET", "/voice_biometrics/v1/user/exists", params={"user_id": "nobody"},
                              headers={**auth})
    assert status == 401
    assert await _cli("admin", "--data-dir", str(gw.settings.data_dir), "user-group-keys", "--tenant", "nope") == 2
