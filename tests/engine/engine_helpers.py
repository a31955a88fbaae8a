"""Helpers for the engine tests (a module with a unique name: tests/ has no packages)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = (REPO / ".." / "shared").resolve()
PROTOCOLS = SHARED / "data" / "protocols"
DATA = Path(__file__).resolve().parent / "data"


def read(rel: str) -> np.ndarray:
    from engine.audio import read_wav_8k
    path = PROTOCOLS / rel
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return read_wav_8k(path)


def speaker_audio(speaker: str, n: int = 3, proto: str = "ls-other-tel") -> np.ndarray:
    """Concatenate the first `n` enrol files of a speaker of a protocol."""
    import csv
    with open(PROTOCOLS / proto / "enrol.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["speaker"] == speaker][:n]
    return np.concatenate([read(f"{proto}/{r['path']}") for r in rows])


def speakers(proto: str = "ls-other-tel") -> list[str]:
    import csv
    path = PROTOCOLS / proto / "enrol.csv"
    if not path.exists():
        pytest.skip("shared data not available")
    with open(path) as fh:
        return sorted({r["speaker"] for r in csv.DictReader(fh)})
