"""Start-up and configuration as an operator meets them (issue #10, section 3): a port in use
or a read-only data dir is one clear line and a non-zero exit, never `listening` or
`gateway_started` first; everything lives under the data dir; admin commands say which
installation they used and honour the same config and environment; unknown VBGW_ variables
are reported."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from gateway.cli import main as cli
from gateway.infra.config import load_settings
from support import REPO, readonly_mount


def _serve(data: Path, *extra: str, prefix: list[str] | None = None, timeout: float = 180):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VBGW_") or k == "VBGW_MODEL_DIR"}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data),
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _one_clear_line(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "listening" not in out and "gateway_started" not in out and "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("vbgw: "), out
    return lines[0]


def test_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve(tmp_path / "var", "--host", "127.0.0.1", "--port", str(port))
    line = _one_clear_line(proc)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line, line


def test_read_only_data_dir_is_one_line_and_exit_1(tmp_path):
    data = tmp_path / "var"
    data.mkdir()
    proc = _serve(data, "--port", "0", prefix=readonly_mount(data))
    line = _one_clear_line(proc)
    assert proc.returncode == 1
    assert f"data directory {data}" in line and "Read-only file system" in line, line


def test_listening_is_said_once_the_socket_serves(tmp_path):
    """`listening` names the real port (port 0 here) and a request right after it succeeds;
    gateway_started was logged before it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VBGW_") or k == "VBGW_MODEL_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--data-dir",
                             str(tmp_path / "var")], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
            if '"event": "listening"' in line:
                break
        url = json.loads(line)["url"]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), line
        assert any("gateway_started" in s for s in seen[:-1]), seen

        async def get():
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as r:
                return r.status
        assert asyncio.run(get()) == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_everything_written_lives_under_the_data_dir(tmp_path):
    d = tmp_path / "gw"
    s = load_settings(environ={"VBGW_SERVER__DATA_DIR": str(d)})
    assert s.events.jsonl_path == d / "events.jsonl"          # was ./var/events.jsonl, whatever the data dir
    assert s.events.outbox_path == d / "outbox.sqlite3"
    assert s.sqlite_path == d / "vbgw.sqlite3"
    assert s.engine.cache_dir == d / "cache"
    elsewhere = tmp_path / "elsewhere" / "e.jsonl"
    s = load_settings(environ={"VBGW_SERVER__DATA_DIR": str(d), "VBGW_EVENTS__JSONL_PATH": str(elsewhere)})
    assert s.events.jsonl_path == elsewhere                   # an absolute path is kept as given


def test_unknown_vbgw_variables_are_reported_with_the_likely_key(capsys, monkeypatch, tmp_path):
    from gateway.infra.config import unknown_env
    warnings = unknown_env({"VBGW_SERVER_PORT": "9", "VBGW_MODEL_DIR": "/m", "VBGW_SERVER__PORT": "9",
                            "VBGW_NONSENSE": "1", "PATH": "/bin"})
    assert len(warnings) == 2, warnings
    assert "VBGW_SERVER_PORT" in warnings[1] and "did you mean VBGW_SERVER__PORT" in warnings[1]
    assert "VBGW_NONSENSE" in warnings[0] and "VBGW_<SECTION>__<KEY>" in warnings[0]
    monkeypatch.setenv("VBGW_SERVER_PORT", "9")
    assert cli.main(["admin", "--data-dir", str(tmp_path / "var"), "pats"]) == 0
    assert "warning: ignoring unknown environment variable VBGW_SERVER_PORT; did you mean VBGW_SERVER__PORT?" \
        in capsys.readouterr().err


def test_list_values_by_environment():
    s = load_settings(environ={"VBGW_EVENTS__SINKS": '["jsonl","webhook"]',
                               "VBGW_EVENTS__WEBHOOK_URL": "http://127.0.0.1:9/x", "VBGW_EVENTS__WEBHOOK_SECRET": "s"})
    assert s.events.sinks == ["jsonl", "webhook"]


def test_admin_commands_say_which_installation_and_honour_env_and_config(capsys, monkeypatch, tmp_path):
    by_env = tmp_path / "by-env"
    monkeypatch.setenv("VBGW_SERVER__DATA_DIR", str(by_env))
    assert cli.main(["admin", "bootstrap", "--tenant", "acme", "--profile", "retail"]) == 0
    err = capsys.readouterr().err
    assert f"data dir {by_env}, database {by_env / 'vbgw.sqlite3'}" in err, err
    assert (by_env / "vbgw.sqlite3").exists()
    monkeypatch.delenv("VBGW_SERVER__DATA_DIR")
    by_file = tmp_path / "by-file"
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[server]\ndata_dir = "{by_file}"\n')
    for argv in (["--config", str(conf), "admin", "pats"], ["admin", "pats", "--config", str(conf)],
                 ["admin", "--config", str(conf), "pats"]):
        assert cli.main(argv) == 0, argv
        assert f"data dir {by_file}" in capsys.readouterr().err, argv


def test_serve_accepts_config_after_the_subcommand(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text("[server]\nport = 9999\n")
    for argv in (["serve", "--config", str(conf)], ["--config", str(conf), "serve"]):
        args = cli.build_parser(include_bench=False).parse_args(argv)
        assert cli._settings(args).server.port == 9999, argv


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert cli.main(["serve", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
