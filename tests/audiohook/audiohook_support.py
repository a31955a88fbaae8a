"""Helpers for the AudioHook tests (a plain module, not a conftest, so its name is unique)."""
from __future__ import annotations

import argparse
import io
import uuid
from contextlib import redirect_stdout
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from tools.audiohook_sim import SimOptions, SimReport, run_session
from support import protocol_audio


def speech(name: str, protocol: str = "ls-other-tel") -> np.ndarray:
    """Real 8 kHz telephony speech from the in-repo protocols (tests/data/README.md)."""
    data, rate = sf.read(protocol_audio(protocol, name), dtype="int16")
    assert rate == 8000
    return data


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (3000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


async def add_org(settings, *extra: str, org_id: str | None = None,
                  profile: str | None = "retail") -> tuple[str, str, str, str]:
    """`vbgw audiohook add-org` against the gateway's data dir: (org id, api key, secret, stdout).
    `profile=None`: an organisation without a default VB profile."""
    from gateway.cli.audiohook import cli_add_org
    org_id = org_id or str(uuid.uuid4())
    ns = argparse.Namespace(org_id=org_id, tenant="acme", profile=profile, no_secret=False, rotate=False,
                            public_host=None)
    for flag in extra:
        setattr(ns, flag.lstrip("-").replace("-", "_"), True)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = await cli_add_org(ns, settings)
    out = buf.getvalue()
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert lines[-2].startswith("api_key=") and lines[-1].startswith("client_secret="), out
    return org_id, lines[-2][len("api_key="):], lines[-1][len("client_secret="):], out


@dataclass
class Org:
    gw: object
    org_id: str
    api_key: str
    secret: str

    @property
    def uri(self) -> str:
        return f"{self.gw.ws_url}{self.gw.settings.audiohook.path}"

    def opts(self, **kw) -> SimOptions:
        kw.setdefault("speed", 0)
        return SimOptions(uri=self.uri, api_key=self.api_key, client_secret=self.secret, org_id=self.org_id, **kw)

    def connect(self, **kw):
        """A raw, correctly signed AudioHook upgrade (websockets.connect), for hand-made messages."""
        import websockets

        from tools.audiohook_sim import _Client
        opts = self.opts(**kw)
        return websockets.connect(opts.uri, additional_headers=_Client(opts, tone(0.1), None).headers(),
                                  max_size=None, ping_interval=None)

    async def run(self, external: np.ndarray | None = None, internal: np.ndarray | None = None,
                  **kw) -> SimReport:
        return await run_session(self.opts(**kw), tone(1.0) if external is None else external, internal)


async def org_for(gw, profile: str | None = "retail") -> Org:
    org_id, key, secret, _ = await add_org(gw.settings, profile=profile)
    return Org(gw, org_id, key, secret)
