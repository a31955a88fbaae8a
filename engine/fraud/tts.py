"""Synthetic-speech (TTS) detector: a small numpy MLP over LFCC statistics.

Weights: `engine/data/tts-detector.npz`, written by `python -m tools.train_tts`
(see docs/fraud-signals.md for the data, the leave-one-engine-out figures and the limits).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..types import EngineError
from .features import DIM, LfccStats

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "data" / "tts-detector.npz"
TTS_DETECTED = "TTS_Detected"
NO_TTS_DETECTED = "No_TTS_Detected"


@dataclass(frozen=True)
class TtsResult:
    label: str              # TTS_Detected | No_TTS_Detected
    score: float            # P(synthetic) in [0, 1] (the seed's detectionScore)
    speech_frames: int      # 10 ms frames the score is based on

    def payload(self) -> dict:
        """The Socket.IO `TTS-Detection-{token}` payload (and the bus `tts` message)."""
        return {"label": self.label, "detectionScore": round(self.score, 4)}


def mlp_logit(params: dict, x: np.ndarray) -> np.ndarray:
    """Forward pass: standardise, tanh hidden layer, linear output logit. x: (n, DIM)."""
    z = (x - params["mu"]) / params["sigma"]
    h = np.tanh(z @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


class TtsDetector:
    def __init__(self, params: dict, threshold: float, meta: dict):
        self.params = params
        self.threshold = float(threshold)
        self.meta = meta

    @classmethod
    def load(cls, path: Path | str | None = None) -> "TtsDetector":
        p = Path(path) if path else DEFAULT_PATH
        try:
            with np.load(p, allow_pickle=False) as z:
                params = {k: z[k].astype(np.float64) for k in ("mu", "sigma", "w1", "b1", "w2", "b2")}
                threshold = float(z["threshold"])
                platt = tuple(float(v) for v in z["platt"]) if "platt" in z.files else (1.0, 0.0)
                meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise EngineError(f"TTS detector weights {p} missing or unreadable: {exc}") from exc
        if params["mu"].shape != (DIM,):
            raise EngineError(f"TTS detector weights {p} expect {params['mu'].shape} features, code has {DIM}")
        params["platt"] = platt
        return cls(params, threshold, meta)

    @property
    def version(self) -> str:
        return str(self.meta.get("id", "tts-unknown"))

    def probability(self, vec: np.ndarray) -> float:
        logit = float(mlp_logit(self.params, np.asarray(vec, np.float64)[None])[0])
        a, b = self.params["platt"]       # calibrated on engines and speakers the model did not see
        return float(1.0 / (1.0 + np.exp(-np.clip(a * logit + b, -40, 40))))

    def result(self, stats: LfccStats) -> TtsResult | None:
        """None until there is enough gated audio (features.MIN_FRAMES)."""
        vec = stats.vector()
        if vec is None:
            return None
        p = self.probability(vec)
        return TtsResult(TTS_DETECTED if p >= self.threshold else NO_TTS_DETECTED, p, stats.speech_frames)

    def score_pcm(self, pcm: np.ndarray, chunk: int = 1600) -> TtsResult | None:
        """Whole-file convenience (int16 8 kHz), fed in live-sized chunks."""
        st = LfccStats()
        for i in range(0, len(pcm), chunk):
            st.add(pcm[i:i + chunk])
        return self.result(st)
