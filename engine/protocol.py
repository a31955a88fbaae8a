"""Speaker-verification trial protocols (format: tests/data/README.md; docs/benchmarks.md, "Data")."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import read_wav_8k


@dataclass
class Protocol:
    name: str
    root: Path
    enrol: list[tuple[str, str, str]]     # model_id, speaker, path
    test: list[tuple[str, str, str]]      # test_id, speaker, path
    trials: list[tuple[str, str, int]]    # model_id, test_id, target

    @classmethod
    def read(cls, root: Path | str) -> "Protocol":
        root = Path(root)

        def rows(name):
            with open(root / name, newline="") as fh:
                return list(csv.DictReader(fh))
        enrol = [(r["model_id"], r["speaker"], r["path"]) for r in rows("enrol.csv")]
        test = [(r["test_id"], r["speaker"], r["path"]) for r in rows("test.csv")]
        trials = [(r["model_id"], r["test_id"], int(r["target"])) for r in rows("trials.csv")]
        return cls(root.name, root, enrol, test, trials)

    def audio(self, rel: str) -> np.ndarray:
        return read_wav_8k(self.root / rel)


@dataclass
class TrialScores:
    protocol: str
    cosine: np.ndarray
    labels: np.ndarray
    speech_ms: np.ndarray      # test-side speech
    missing: int               # trials not scored (NO_DATA on one side; cosine set to -1)


NO_DATA_MS = 500   # the gateway answers NO_DATA below this much customer speech


def score_protocol(engine, proto: Protocol, batch_files: int = 32,
                   min_speech_ms: int = NO_DATA_MS) -> TrialScores:
    """Embed every enrol and test file through the engine's session path, cosine-score
    every trial. A side with less than `min_speech_ms` of speech makes the trial
    not scored, as the product would answer NO_DATA."""
    def embed_all(items):
        out = {}
        for k in range(0, len(items), batch_files):
            part = items[k:k + batch_files]
            embs = engine.embed_many_sync([proto.audio(p) for _, _, p in part])
            out.update({i: e for (i, _, _), e in zip(part, embs)})
        return out
    enr = embed_all(proto.enrol)
    tst = embed_all(proto.test)
    cos, lab, sp = [], [], []
    missing = 0
    for m, t, y in proto.trials:
        a, b = enr.get(m), tst.get(t)
        if a is None or b is None or min(a.speech_ms, b.speech_ms) < min_speech_ms:
            missing += 1
            cos.append(-1.0)
            sp.append(0)
        else:
            cos.append(float(a.vector @ b.vector))
            sp.append(b.speech_ms)
        lab.append(y)
    return TrialScores(proto.name, np.array(cos), np.array(lab), np.array(sp), missing)
