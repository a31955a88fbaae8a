"""The fuzzers' gateway: one real `vbgw serve` per test session, with credentials of every
kind the API has (PAT, session token, metrics token, Aculab user group key)."""
from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from dataclasses import dataclass

import pytest
import requests

from support import REPO, serve_process


@dataclass
class FuzzGateway:
    base: str
    port: int
    pat: str
    token: str
    master_id: str
    creds: dict[str, str]       # security scheme name -> Authorization header value

    def session_token(self, master_id: str) -> str:
        return requests.post(f"{self.base}/api/token/", headers={"Authorization": f"Bearer {self.pat}"}, timeout=60,
                             json={"agentId": "a", "agentSkill": "s", "masterId": master_id, "tenantId": "acme",
                                   "vbProfile": "retail", "ccaasProvider": "GENESYS"}).json()["data"]["token"]


@pytest.fixture(scope="session")
def gateway_process(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "var"
    proc, port, pat, base = asyncio.run(serve_process(data, VBGW_LOGGING__LEVEL="warning"))
    try:
        gw = FuzzGateway(base, port, pat, "", "fuzz-call", {})
        gw.token = gw.session_token(gw.master_id)
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "admin", "--data-dir", str(data), "user-group-key",
                              "--tenant", "acme", "--profile", "retail"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        key = out.strip().splitlines()[-1].removeprefix("key=")
        gw.creds = {"pat": f"Bearer {pat}", "session": f"Bearer {gw.token}", "session_query": f"Bearer {gw.token}",
                    "metrics": f"Bearer {(data / 'metrics.token').read_text().strip()}",
                    "user_group_key": "Basic " + base64.b64encode(f"acme/fuzz:{key}".encode()).decode()}
        yield gw
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        err = proc.stderr.read().decode()
        assert "unhandled_error" not in err, err[-3000:]
