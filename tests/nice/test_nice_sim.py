"""`vbgw nice-sim` against a running gateway: a stereo call (agent left, contact right, as NICE
records) streamed as TX and RX sockets with a hold in the middle, its verification read back; many
contacts at once; the probe; faults give the server's error codes and a non-zero exit."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import soundfile as sf
from nice_support import A, B, speech, unit_for

from gateway.cli import main as cli
from gateway.web.appkeys import SERVICES
from support import dialog_named

ANI = "+15551688"


async def enrol_a(gw) -> None:
    from connectors.codecs import encode_mulaw
    tok = await gw.token("enrol-a", custom={"Ani": ANI})
    await gw.stream(tok, "enrol-a", encode_mulaw(speech(f"{A}_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": ANI})
    assert status == 200, body


def stereo(path, customer: np.ndarray, agent: np.ndarray) -> None:
    n = max(len(customer), len(agent))
    pcm = np.stack([np.pad(agent, (0, n - len(agent))), np.pad(customer, (0, n - len(customer)))], axis=1)
    sf.write(path, pcm, 8000, subtype="PCM_16")


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def test_stereo_call_with_a_hold_and_its_verification(gateway, tmp_path, capsys):
    gw = gateway
    await enrol_a(gw)
    unit = await unit_for(gw)
    wav = tmp_path / "call.wav"
    stereo(wav, speech(f"{A}_test1", f"{A}_test2", f"{A}_test3"), speech(f"{B}_test0", f"{B}_test1"))
    base = ["nice-sim", "--uri", unit.uri, "--api-key", unit.api_key]
    rc = await run_cli(*base, "--fast", "--contact-id", "700000000501", "--ani", "+1 555 1688", "--hold-at", "5",
                       "--hold-for", "0.5", "--end", "stop", "--pat", gw.pat, "--tenant", "acme", "--profile",
                       "retail", str(wav))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "contact 700000000501: ok (TX#1 5.0 s, RX#1 5.0 s, TX#2 7.0 s ended, RX#2 7.0 s ended" in out, out
    assert "1/1 contacts ok, 0 violations" in out
    line = next(x for x in out.splitlines() if x.startswith("verification of contact 700000000501"))
    assert f"{ANI}: TRUE_" in line, out
    d = dialog_named(gw.app[SERVICES], "700000000501")
    assert d.samples_in == len(speech(f"{A}_test1", f"{A}_test2", f"{A}_test3"))

    # Many contacts at once, JSON lines; then the probe.
    rc = await run_cli(*base, "--fast", "--calls", "3", "--rate", "0", "--shape", "media", "--json", str(wav))
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert rc == 0 and len(lines) == 3 and all(x["ok"] and len(x["sockets"]) == 2 for x in lines)
    assert len({x["contact_id"] for x in lines}) == 3
    assert await run_cli(*base, "--probe", "--end", "stop") == 0
    assert "1/1 contacts ok" in capsys.readouterr().out


async def test_faults_are_reported_with_the_servers_codes(gateway, tmp_path, capsys):
    gw = gateway
    unit = await unit_for(gw)
    wav = tmp_path / "mono.wav"
    sf.write(wav, speech(f"{A}_test0"), 8000, subtype="ULAW")
    base = ["nice-sim", "--uri", unit.uri, "--api-key", unit.api_key, "--fast", str(wav)]
    for fault, code in (("bad_handshake", "BAD_HANDSHAKE"), ("audio_before_handshake", "AUDIO_BEFORE_HANDSHAKE"),
                        ("bad_base64", "BAD_BASE64"), ("oversized_frame", "FRAME_TOO_LARGE")):
        assert await run_cli(*base, "--fault", fault) == 1, fault
        out = capsys.readouterr().out
        assert f"server error {code}" in out and "0/1 contacts ok" in out, out
    assert await run_cli(*base, "--fault", "wrong_key") == 1
    assert "401 Unauthorized" in capsys.readouterr().out
    assert await run_cli(*base, "--fault", "drop") == 0            # a drop is a hold to the server
    assert await run_cli(*base, "--auth", "query", "--mix") == 0
    assert await run_cli(*base, "--auth", "bearer", "--shape", "audio", "--end", "empty") == 0
