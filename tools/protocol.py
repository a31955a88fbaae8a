"""Speaker-verification trial protocols (format: tests/data/README.md; docs/benchmarks.md, "Data").

Every tool reads call audio with `read_audio`: the product's decoder and resampler
(connectors.codecs.read_wav_8k, the one uploads use), so calibration and the benchmarks score
exactly what the gateway would. Its channel rule is the product's: a multi-channel file gives
channel 0 (the customer on Genesys recordings), never a mix of channels; the protocols' files
are mono 8 kHz G.711, on which the rule changes nothing. (tools/speechset.py is the exception
on purpose: it builds telephony test speech from raw corpora, simulating the channel in float.)"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectors.codecs import read_wav_8k


def read_audio(path: Path | str) -> np.ndarray:
    """A WAV file as int16 mono 8 kHz, decoded as the gateway decodes an upload (see above)."""
    return read_wav_8k(Path(path).read_bytes())


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
        return read_audio(self.root / rel)


@dataclass
class TrialScores:
    protocol: str
    cosine: np.ndarray
    labels: np.ndarray
    speech_ms: np.ndarray      # test-side speech
    missing: int               # trials not scored (NO_DATA on one side; cosine set to -1)
    enrol_speaker: np.ndarray | None = None   # speaker of each trial's model
    test_speaker: np.ndarray | None = None    # speaker of each trial's test


NO_DATA_MS = 500   # the gateway answers NO_DATA below this much customer speech


def score_protocol(engine, proto: Protocol, batch_files: int = 32,
                   min_speech_ms: int = NO_DATA_MS, cache: dict | None = None) -> TrialScores:
    """Embed every enrol and test file through the engine's session path, cosine-score
    every trial. A side with less than `min_speech_ms` of speech makes the trial
    not scored, as the product would answer NO_DATA. `cache` (resolved path ->
    embedding) lets protocols that share audio embed each file once."""
    cache = {} if cache is None else cache

    def embed_all(items):
        keys = {i: (proto.root / p).resolve() for i, _, p in items}
        todo = sorted({k for k in keys.values() if k not in cache})
        for k in range(0, len(todo), batch_files):
            part = todo[k:k + batch_files]
            embs = engine.embed_many_sync([read_audio(p) for p in part])
            cache.update(zip(part, embs))
        return {i: cache[k] for i, k in keys.items()}
    enr = embed_all(proto.enrol)
    tst = embed_all(proto.test)
    cos, lab, sp = [], [], []
    missing = 0
    spk_e = {m: s for m, s, _ in proto.enrol}
    spk_t = {t: s for t, s, _ in proto.test}
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
    return TrialScores(proto.name, np.array(cos), np.array(lab), np.array(sp), missing,
                       np.array([spk_e[m] for m, _, _ in proto.trials], dtype=object),
                       np.array([spk_t[t] for _, t, _ in proto.trials], dtype=object))
