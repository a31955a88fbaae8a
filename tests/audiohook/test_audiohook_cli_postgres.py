"""`vbgw audiohook list` and `remove` work on the configured store. Found while building the NICE
commands: both opened the SQLite file directly, so on a PostgreSQL installation `list` showed
nothing (after announcing the PostgreSQL database) and `remove` could not revoke a key."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import services

REPO = Path(__file__).resolve().parents[2]


def _vbgw(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *argv], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True)


async def test_list_and_remove_use_the_postgresql_store(tmp_path):
    services.need("postgres")
    schema = services.unique("ahcli")
    env = {"VBGW_STORAGE__DSN": services.PG_DSN, "VBGW_STORAGE__PG_SCHEMA": schema,
           "VBGW_ENCRYPTION__KEYS": base64.b64encode(os.urandom(32)).decode(),
           "VBGW_SERVER__DATA_DIR": str(tmp_path / "var")}
    org = str(uuid.uuid4())
    try:
        boot = _vbgw(env, "admin", "bootstrap", "--tenant", "acme", "--profile", "retail")
        assert boot.returncode == 0, boot.stderr
        added = _vbgw(env, "audiohook", "add-org", "--org-id", org, "--tenant", "acme")
        assert added.returncode == 0, added.stderr
        listed = _vbgw(env, "audiohook", "list")
        assert listed.returncode == 0 and org in listed.stdout, (listed.stdout, listed.stderr)
        removed = _vbgw(env, "audiohook", "remove", "--org-id", org)
        assert removed.returncode == 0, removed.stderr
        assert org not in _vbgw(env, "audiohook", "list").stdout
        assert not (tmp_path / "var" / "vbgw.sqlite3").exists()       # nothing went to an SQLite file
    finally:
        await services.drop_schema(schema)
