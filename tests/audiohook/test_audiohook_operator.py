"""`vbgw audiohook list|remove` and the simulator's outcome and errors (issue #10, section 5)."""
from __future__ import annotations

import asyncio
import socket

import soundfile as sf
from audiohook_support import org_for, speech

from connectors.codecs import encode_mulaw
from gateway.cli import main as cli


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def test_list_shows_orgs_without_credentials_and_remove_refuses_them(gateway, capsys):
    gw = gateway
    org = await org_for(gw)
    data = ["--data-dir", str(gw.settings.data_dir)]
    assert await _cli("audiohook", *data, "list") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split("\t") == ["org_id", "tenant", "default_profile", "requests", "created"]
    row = next(ln for ln in out.splitlines() if ln.startswith(org.org_id)).split("\t")
    assert row[1:4] == ["acme", "retail", "signed"]
    assert org.api_key not in out and org.secret not in out
    assert (await org.run()).ok
    assert await _cli("audiohook", *data, "remove", "--org-id", org.org_id) == 0
    assert "removed AudioHook organization" in capsys.readouterr().out
    assert (await org.run()).http_status == 401
    assert await _cli("audiohook", *data, "remove", "--org-id", org.org_id) == 2
    assert "no AudioHook organization" in capsys.readouterr().err


async def test_simulator_prints_the_verification_outcome(gateway, tmp_path, capsys):
    gw = gateway
    tok = await gw.token("enrol-a")
    await gw.stream(tok, "enrol-a", encode_mulaw(speech("1688_enrol0")))
    assert (await gw.call("POST", "/enrol", tok, json={"user_id": "cust-a"}))[0] == 200
    org = await org_for(gw)
    wav = tmp_path / "call.wav"
    sf.write(wav, speech("1688_test1"), 8000, subtype="ULAW")
    assert await _cli("audiohook-sim", "--uri", org.uri, "--api-key", org.api_key, "--client-secret", org.secret,
                      "--org-id", org.org_id, "--fast", str(wav), "--pat", gw.pat, "--tenant", "acme",
                      "--profile", "retail", "--users", "cust-a") == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("verification of conversation"))
    assert "cust-a: TRUE_" in line and "score" in line, out


async def test_simulator_errors_name_the_cause(gateway, tmp_path, capsys):
    gw = gateway
    org = await org_for(gw)
    wav = tmp_path / "call.wav"
    sf.write(wav, speech("1688_test0")[:8000], 8000, subtype="ULAW")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    base = ["--api-key", org.api_key, "--org-id", org.org_id, "--fast"]
    cases = [
        ([*base, "--uri", org.uri, str(tmp_path / "missing.wav")], 2, "no such file"),
        ([*base, "--uri", org.uri, "--client-secret", "AAAA", str(wav)], 1, "401 Unauthorized"),
        ([*base, "--uri", org.uri.replace("/audiohook/ws", "/wrong/path"), "--client-secret", org.secret, str(wav)],
         1, "404 Not Found: no AudioHook endpoint at /wrong/path"),
        ([*base, "--uri", f"ws://127.0.0.1:{closed}/audiohook/ws", str(wav)], 1, "connection refused"),
    ]
    for argv, rc, cause in cases:
        assert await _cli("audiohook-sim", *argv) == rc, argv
        io = capsys.readouterr()
        assert cause in io.err and "Traceback" not in io.err + io.out, (argv, io)
        assert "protocol violations" not in io.err
