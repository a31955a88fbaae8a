"""The command lines: `vbgw audiohook add-org` and `vbgw audiohook-sim` (exit codes)."""
from __future__ import annotations

import asyncio
import uuid

import soundfile as sf
from audiohook_support import org_for, speech

from gateway.cli import main as cli


async def test_add_org_output_and_errors(gateway, capsys):
    org_id = str(uuid.uuid4())
    argv = ["audiohook", "--data-dir", str(gateway.settings.data_dir), "add-org", "--org-id", org_id,
            "--tenant", "acme", "--profile", "retail", "--public-host", "vb.example.com"]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "  Connection URI:  wss://vb.example.com/audiohook/ws" in out
    assert out[-2].startswith("api_key=") and len(out[-2]) > 40
    assert out[-1].startswith("client_secret=") and out[-1].endswith("=")
    assert await asyncio.to_thread(cli.main, argv) == 2                     # exists: needs --rotate
    assert "--rotate" in capsys.readouterr().err
    assert await asyncio.to_thread(cli.main, argv + ["--rotate"]) == 0
    bad = ["audiohook", "--data-dir", str(gateway.settings.data_dir), "add-org", "--org-id", "not-a-uuid"]
    assert await asyncio.to_thread(cli.main, bad) == 2
    nope = bad[:-1] + [str(uuid.uuid4()), "--tenant", "acme", "--profile", "no-such-profile"]
    assert await asyncio.to_thread(cli.main, nope) == 2


async def test_simulator_cli_exit_codes(gateway, tmp_path, capsys):
    org = await org_for(gateway)
    wav = tmp_path / "call.wav"
    sf.write(wav, speech("1688_test0")[:8000], 8000, subtype="ULAW")
    base = ["audiohook-sim", "--uri", org.uri, "--api-key", org.api_key, "--client-secret", org.secret,
            "--org-id", org.org_id]
    assert await asyncio.to_thread(cli.main, base + ["--fast", str(wav)]) == 0
    assert "1/1 sessions ok, 0 protocol violations" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, base + ["--probe"]) == 0
    assert await asyncio.to_thread(cli.main, base + ["--fast", "--fault", "odd_frame", str(wav)]) == 1
    assert await asyncio.to_thread(cli.main, base[:5] + ["--client-secret", "AAAA", "--org-id", org.org_id,
                                                         "--fast", str(wav)]) == 1


def test_api_keys_never_look_like_command_line_options():
    """A key that starts with "-" is read as an option by every command line (it made
    `audiohook-sim --api-key KEY` fail about one run in 32)."""
    from gateway.services.audiohook_orgs import new_credentials
    keys = [new_credentials()[0] for _ in range(500)]
    assert all(k[0].isalnum() and k.isalnum() for k in keys)
