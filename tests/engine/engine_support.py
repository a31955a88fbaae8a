"""Helpers for the engine tests (a module with a unique name: tests/ has no packages)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from support import PROTOCOLS, protocol_file  # noqa: F401  (PROTOCOLS: for the tests' csv reads)

DATA = Path(__file__).resolve().parent / "data"


def read(rel: str) -> np.ndarray:
    """8 kHz samples of `rel` ("PROTOCOL/audio/NAME.wav") of the in-repo protocols."""
    from tools.protocol import read_audio
    proto, _, rest = rel.partition("/")
    return read_audio(protocol_file(proto, rest))


def speaker_audio(speaker: str, n: int = 3, proto: str = "ls-other-tel") -> np.ndarray:
    """Concatenate the first `n` enrol files of a speaker of a protocol."""
    import csv
    with open(protocol_file(proto, "enrol.csv")) as fh:
        rows = [r for r in csv.DictReader(fh) if r["speaker"] == speaker][:n]
    assert rows, f"no enrol file of speaker {speaker!r} in the in-repo protocol {proto}"
    return np.concatenate([read(f"{proto}/{r['path']}") for r in rows])


def speakers(proto: str = "ls-other-tel") -> list[str]:
    import csv
    with open(protocol_file(proto, "enrol.csv")) as fh:
        return sorted({r["speaker"] for r in csv.DictReader(fh)})
