"""Scoring: an embedding against a voiceprint, llr bands, and enrolment's voiceprint update.

Pure arithmetic over the calibration (engine/calibration.py: cosine -> llr, and the llr
thresholds of a profile's error-rate targets); docs/scoring.md explains the figures.
"""
from __future__ import annotations

import math

import numpy as np

from .calibration import Calibration, sigmoid
from .types import BandTargets, Embedding, EngineError, Score


class Scorer:
    """Scores for one encoder's embeddings (`model` names it in errors) under its calibration."""

    def __init__(self, cal: Calibration, model: str):
        self.cal = cal
        self.model = model

    def score(self, embedding: Embedding, voiceprint: np.ndarray) -> Score:
        """Cosine of the embedding and the voiceprint, its calibrated llr, the llr per sqrt of
        a second of speech, and the posterior at prior 0.5."""
        vp = np.asarray(voiceprint, dtype=np.float32).reshape(-1)
        if vp.shape[0] != embedding.vector.shape[0]:
            raise EngineError(f"voiceprint has dim {vp.shape[0]}, model {self.model} "
                              f"has {embedding.vector.shape[0]}")
        n = float(np.linalg.norm(vp))
        if not math.isfinite(n) or n == 0:
            raise EngineError("voiceprint is zero or not finite")
        cos = float(np.clip(embedding.vector @ vp / n, -1.0, 1.0))
        llr = float(self.cal.llr(cos))
        secs = max(embedding.speech_ms, 1) / 1000.0
        return Score(cosine=cos, llr=llr, llr_norm=llr / math.sqrt(secs), bio_score=sigmoid(llr))

    def classify(self, llr: float, targets: BandTargets) -> str:
        """The seed's result band (TRUE_HIGH ... FALSE_HIGH) of an llr under a profile's targets."""
        return self.cal.classify(llr, targets)

    def thresholds(self, targets: BandTargets) -> dict[str, float]:
        """The llr thresholds of a profile's targets, by band."""
        return self.cal.thresholds(targets)

    @staticmethod
    def merge(voiceprint: np.ndarray, voiceprint_speech_ms: int, new: Embedding) -> Embedding:
        """A voiceprint updated with new speech: the speech-weighted mean, L2-normalised."""
        vp = np.asarray(voiceprint, dtype=np.float64).reshape(-1)
        vp = vp / max(float(np.linalg.norm(vp)), 1e-12)
        a, b = max(int(voiceprint_speech_ms), 0), max(int(new.speech_ms), 0)
        if a + b == 0:
            a = b = 1
        v = (vp * a + new.vector.astype(np.float64) * b) / (a + b)
        v = (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)
        return Embedding(vector=v, speech_ms=int(voiceprint_speech_ms) + int(new.speech_ms),
                         model=new.model)
