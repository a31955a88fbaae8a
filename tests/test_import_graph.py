"""The run-time import graph: the running gateway and the engine import neither the tools
package (benchmarks, simulators, calibration and training code, the TTS detector's among them)
nor matplotlib; connectors import no aiohttp, engine or surface; the engine imports nothing of
the gateway (issue #13)."""
from __future__ import annotations

import json
import subprocess
import sys

from support import REPO


def imported_by(*modules: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing `modules`."""
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _under(mods: set[str], *packages: str) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in packages)


def test_the_running_gateway_imports_no_tools_and_no_matplotlib():
    # the fraud and Aculab services load the TTS detector; its training code (tools.train_tts,
    # tools.train_tts_corpus) must stay out of the running process
    mods = imported_by("gateway.app", "gateway.cli.serve", "gateway.cli.main", "gateway.services.fraud", "gateway.services.aculab",
                       "engine", "engine.fraud")
    assert _under(mods, "tools", "matplotlib") == []


def test_training_code_lives_in_tools_not_in_the_engine():
    assert sorted(p.relative_to(REPO).as_posix() for p in (REPO / "engine").rglob("train*.py")) == []


def test_the_engine_imports_nothing_of_the_gateway_or_the_connectors():
    mods = imported_by("engine", "engine.facade", "engine.fraud")
    assert _under(mods, "gateway", "connectors", "tools", "aiohttp", "matplotlib") == []


def test_connectors_know_no_aiohttp_engine_or_surface():
    mods = imported_by("connectors.base", "connectors.codecs", "connectors.ocp_stream", "connectors.audiohook",
                       "connectors.audiohook_signature", "connectors.aculab_ws", "connectors.nice")
    assert _under(mods, "aiohttp", "engine", "gateway", "tools") == []
