"""`vbgw nice-sim` against a real gateway: it streams WAV files as CXone does (TX and RX sockets,
raw mu-law, hold and resume, faults) and prints each contact's outcome, with the statuses and
results the contact's agent panel receives on Socket.IO; as a probe it answers an admin in one
line, naming the cause of a failure."""
from __future__ import annotations

import asyncio
import json
import re
import socket

import numpy as np
import soundfile as sf
from nice_support import A, B, speech, unit_for

from connectors.codecs import encode_mulaw
from gateway.cli import main as cli
from gateway.web.appkeys import SERVICES
from support import dialog_named, protocol_audio

ANI = "+15551688"
P = "ls-other-tel"


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def _enrol_a(gw) -> None:
    """Speaker A enrolled with user id = the caller's number (Omilia's NICE app enrols by ANI)."""
    tok = await gw.token("enrol-a", custom={"Ani": ANI})
    await gw.stream(tok, "enrol-a", encode_mulaw(speech(f"{A}_enrol0")))
    status, body = await gw.call("POST", "/enrol", tok, json={"user_id": ANI})
    assert status == 200, body


def _own(text: str) -> list[str]:
    """The tool's lines of captured output (the in-process gateway logs there too)."""
    return [ln for ln in text.splitlines() if not re.match(r"\d{4}-\d\d-\d\d |vbgw (admin|nice): data dir", ln)]


def _blocks(out: str) -> dict[str, list[str]]:
    """The printed report per file: {file name: [its lines]}."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        m = re.match(r"contact (\d+) \((.+?)\): ", line)
        if m:
            current = blocks.setdefault(m.group(2), [line])
        elif line.startswith("  ") and current:
            current.append(line)
    return blocks


async def test_sim_streams_files_as_cxone_and_prints_each_contacts_results(gateway, capsys):
    gw = gateway
    await _enrol_a(gw)
    unit = await unit_for(gw)
    genuine, impostor = protocol_audio(P, f"{A}_test1"), protocol_audio(P, f"{B}_test0")
    rc = await _cli("nice-sim", "--endpoint", unit.uri, "--api-key", unit.api_key, "--ani", ANI, "--fast",
                    "--perspectives", "TX,RX", "--end", "stop", "--rate", "0", "--pat", gw.pat, "--tenant", "acme",
                    "--profile", "retail", str(genuine), str(impostor))
    out = capsys.readouterr().out
    assert rc == 0, out
    blocks = _blocks(out)
    assert set(blocks) == {genuine.name, impostor.name}, out
    frames = len(speech(f"{A}_test1")) // 160                 # 20 ms messages of 160 bytes
    for name, lines in blocks.items():
        assert f"ok (TX 1 socket 4.0 s {frames} frames; RX 1 socket 4.0 s {frames} frames)" in lines[0], out
        assert "  status: CALL_OPENED, BIO_ACTIVE, CALL_CLOSED" in lines, out
        assert f"  verification: {ANI}: STARTING" in lines, out
    result = {name: next(ln for ln in lines if ln.startswith("  result: ")) for name, lines in blocks.items()}
    assert result[genuine.name].startswith(f"  result: {ANI}: TRUE_") and "score" in result[genuine.name], out
    assert result[impostor.name].startswith(f"  result: {ANI}: FALSE_"), out
    assert "2/2 contacts ok, 0 protocol violations" in out
    # Then each contact's verification read back from the REST API (the normalised --ani).
    contacts = dict(re.findall(r"^contact (\d+) \((.+?)\): ", out, re.M))
    readback = dict(re.findall(r"^verification of contact (\d+): (.*)$", out, re.M))
    assert set(readback) == set(contacts), out
    by_file = {name: readback[c] for c, name in contacts.items()}
    assert by_file[genuine.name].startswith(f"{ANI}: TRUE_") and by_file[impostor.name].startswith(f"{ANI}: FALSE_")


async def test_sim_hold_resume_drop_and_mix_keep_one_dialog(gateway, tmp_path, capsys):
    gw = gateway
    await _enrol_a(gw)
    unit = await unit_for(gw)
    # A NICE recording: the agent (B) on the left, the contact (A) on the right.
    contact, agent = speech(f"{A}_test1", f"{A}_test2"), speech(f"{B}_test0", f"{B}_test1")
    stereo = tmp_path / "nice-call.wav"
    sf.write(stereo, np.stack([agent, contact], axis=1), 8000, subtype="ULAW")
    base = ["nice-sim", "--uri", unit.uri, "--api-key", unit.api_key, "--ani", ANI, "--pat", gw.pat,
            "--tenant", "acme", "--profile", "retail", "--json", "--end", "stop"]
    cases = {"hold": ["--speed", "4", "--hold-at", "3", "--hold-for", "1"],   # within nice.resume_idle_s (3 s)
             "drop": ["--speed", "4", "--fault", "drop", "--auth", "bearer"],
             "mix": ["--speed", "4", "--mix", "--shape", "media", "--end", "empty", "--auth", "query"]}
    for case, extra in cases.items():
        assert await _cli(*base, *extra, str(stereo)) == 0, case
        out = capsys.readouterr().out                # (the in-process gateway logs there too)
        report = json.loads(next(ln for ln in out.splitlines() if ln.startswith('{"contact_id"')))
        assert report["ok"] and report["statuses"] == ["CALL_OPENED", "BIO_ACTIVE", "CALL_CLOSED"], (case, report)
        socks = report["sockets"]
        sent = {p: sum(s["audio_s"] for s in socks if s["perspective"] == p) for p in ("TX", "RX", "MIX")}
        results = report["results"]
        assert len(results) == 1 and results[0]["bioResult"].startswith("TRUE_"), (case, report)
        if case == "hold":
            assert report["holds"] == 1 and [s["perspective"] for s in socks] == ["TX", "RX", "TX", "RX"]
            assert all(s["close_code"] == 1000 for s in socks) and sent["TX"] == sent["RX"] == 8.0
            assert [s["ended"] for s in socks] == [False, False, True, True]      # closed for the hold
        elif case == "drop":
            assert [(s["perspective"], s["dropped"]) for s in socks] == [("TX", True), ("TX", False), ("RX", False)]
            assert sent["TX"] == 8.0
        else:
            assert [s["perspective"] for s in socks] == ["MIX"] and results[0]["mixed"] is True
        d = dialog_named(gw.app[SERVICES], report["contact_id"])              # one dialog, all the audio
        assert d.samples_in == len(contact)

    # Many contacts at once from one file, with given contact ids; closed as CXone closes them
    # (the default end): the calls stay open for a resume, nothing is refused.
    rc = await _cli("nice-sim", "--uri", unit.uri, "--api-key", unit.api_key, "--fast", "--calls", "3", "--rate", "0",
                    "--contact-id", "700000000901", "--json", str(stereo))
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"contact_id"')]
    assert rc == 0 and sorted(x["contact_id"] for x in lines) == [f"700000000901-{k}" for k in (1, 2, 3)]
    assert all(x["ok"] and [s["perspective"] for s in x["sockets"]] == ["TX", "RX"] for x in lines), lines
    assert all(s["close_code"] == 1000 and not s["ended"] for x in lines for s in x["sockets"])
    for _ in range(20):                  # the gateway handles each close just after the tool saw it
        dialogs = [dialog_named(gw.app[SERVICES], x["contact_id"]) for x in lines]
        if all(d.awaiting_resume for d in dialogs):
            break
        await asyncio.sleep(0.05)
    assert all(d.awaiting_resume for d in dialogs), [(d.active_streams, d.status) for d in dialogs]


async def test_sim_faults_and_probe_name_the_cause(gateway, tmp_path, capsys):
    gw = gateway
    unit = await unit_for(gw)
    wav = str(protocol_audio(P, f"{A}_test1"))
    base = ["nice-sim", "--api-key", unit.api_key, "--fast"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]

    # Probe: one line on stdout when the endpoint and the key work, on stderr naming the cause otherwise.
    for auth in ("header", "bearer", "query"):
        assert await _cli(*base, "--endpoint", unit.uri, "--probe", "--auth", auth) == 0, auth
        io = capsys.readouterr()
        out, err = _own(io.out), _own(io.err)
        assert len(out) == 1 and out[0].startswith(f"probe ok: {unit.uri} accepted the API key") and not err, io
    probes = [
        (["--endpoint", unit.uri, "--fault", "wrong_key"], "401 Unauthorized: the API key was refused"),
        (["--endpoint", unit.uri, "--header", "X-Other"], "401 Unauthorized"),
        (["--endpoint", unit.uri.replace("/nice/ws", "/wrong/path")], "404 Not Found: no NICE endpoint at /wrong/path"),
        (["--endpoint", f"ws://127.0.0.1:{closed}/nice/ws"], "connection refused"),
        (["--endpoint", unit.uri.replace("ws://", "wss://")], "the TLS handshake failed"),
    ]
    for argv, cause in probes:
        assert await _cli(*base, *argv, "--probe") == 1, argv
        io = capsys.readouterr()
        out, err = _own(io.out), _own(io.err)
        assert len(err) == 1 and err[0].startswith("vbgw nice-sim: probe failed: ") and cause in err[0], (argv, io)
        assert not out and "Traceback" not in io.err + io.out, io

    # Faults: the gateway's answer (error code and close code) is printed; the exit code is 1.
    faults = {"bad_handshake": "BAD_HANDSHAKE", "no_contact_id": "BAD_HANDSHAKE",
              "bad_perspective": "BAD_PERSPECTIVE", "audio_before_handshake": "AUDIO_BEFORE_HANDSHAKE",
              "oversized_frame": "FRAME_TOO_LARGE", "bad_base64": "BAD_BASE64"}
    for fault, code in faults.items():
        assert await _cli(*base, "--endpoint", unit.uri, "--fault", fault, "--perspectives", "TX,RX", wav) == 1, fault
        io = capsys.readouterr()
        for p in ("TX", "RX"):
            assert f"{p}: the gateway refused: {code}: " in io.out, (fault, io)
        assert "0/1 contacts ok, 0 protocol violations" in io.out, io
        assert "Traceback" not in io.out + io.err
    assert await _cli(*base, "--endpoint", unit.uri, "--fault", "wrong_key", wav) == 1
    io = capsys.readouterr()
    assert "0/1 contacts ok" in io.out and "401 Unauthorized" in io.err
    # Not a fault of the tool's: messages over nice.max_frame_bytes (10 s each); the gateway's
    # error arrives while audio flows and is reported as such.
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, speech(f"{A}_test1", f"{A}_test2", f"{A}_test3"), 8000, subtype="ULAW")
    assert await _cli(*base, "--endpoint", unit.uri, "--frame-ms", "10000", str(long_wav)) == 1
    io = capsys.readouterr()
    assert "TX: the gateway refused: FRAME_TOO_LARGE: " in io.out and "(close 1009)" in io.out, io

    # Usage errors: exit code 2, one line.
    usage = [(["--endpoint", unit.uri, str(tmp_path / "missing.wav")], "no such file"),
             (["--endpoint", unit.uri, "--perspectives", "TX,XY", wav], "--perspectives"),
             (["--endpoint", unit.uri, "--param", "novalue", wav], "KEY=VALUE"),
             (["--endpoint", "ftp://x", wav], "not a gateway URL"),
             (["--endpoint", unit.uri, "--pat", gw.pat, wav], "--pat needs --tenant and --profile")]
    for argv, cause in usage:
        assert await _cli(*base, *argv) == 2, argv
        err = _own(capsys.readouterr().err)
        assert len(err) == 1 and cause in err[0] and "Traceback" not in err[0], (argv, err)
