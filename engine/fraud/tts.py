"""Synthetic-speech (TTS / voice-clone) detector: a small numpy MLP scoring every gated 10 ms
frame, averaged over the call so far.

`engine/fraud/features.py` turns audio into 85 values per gated frame, minus the call's running
mean (`RunningMeanNorm`); the MLP (85 -> 48 -> 24 -> 1, tanh) gives each frame a logit; a call's
score is the mean of its frames' logits (each clipped to +-CLIP so a few odd frames cannot decide
a call), Platt-scaled into P(synthetic). The running state per call is a few sums and a count
(`TtsStream`), so a milestone reads "the call so far" at no extra cost. Weights:
`engine/data/tts-detector.npz`, written by the training tool `python -m tools.train_tts`
(never imported at run time); docs/fraud-signals.md has the data, the leave-one-family-out
figures and the limits."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..types import EngineError
from .features import DIM, FrameFeatures, RunningMeanNorm

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "data" / "tts-detector.npz"
TTS_DETECTED = "TTS_Detected"
NO_TTS_DETECTED = "No_TTS_Detected"
MIN_FRAMES = 100        # 1 s of gated frames before a score is given
CLIP = 8.0              # a frame's logit counts at most this much towards the mean
FORMAT = "frame-mlp-cmn-1"  # weights layout this code reads
PARAM_KEYS = ("cmn_prior", "mu", "sigma", "w1", "b1", "w2", "b2", "w3", "b3")


@dataclass(frozen=True)
class TtsResult:
    label: str              # TTS_Detected | No_TTS_Detected
    score: float            # P(synthetic) in [0, 1] (the seed's detectionScore)
    speech_frames: int      # 10 ms frames the score is based on

    def payload(self) -> dict:
        """The Socket.IO `TTS-Detection-{token}` payload (and the bus `tts` message)."""
        return {"label": self.label, "detectionScore": round(self.score, 4)}


def frame_logits(params: dict, x: np.ndarray) -> np.ndarray:
    """Per-frame logits of (mean-normalised) feature rows x (n, DIM): standardise, two tanh
    layers, linear."""
    z = (x - params["mu"]) / params["sigma"]
    h = np.tanh(z @ params["w1"] + params["b1"])
    h = np.tanh(h @ params["w2"] + params["b2"])
    return h @ params["w3"] + params["b3"]


class TtsStream:
    """One call's running TTS evidence: frame features in, a clipped logit sum and a count."""

    def __init__(self, params: dict):
        self.params = params
        self.features = FrameFeatures()
        self.norm = RunningMeanNorm(params["cmn_prior"])
        self.logit_sum = 0.0
        self.n = 0

    def add(self, pcm) -> None:
        x = self.norm.apply(self.features.add(pcm))
        if len(x):
            self.logit_sum += float(np.clip(frame_logits(self.params, x), -CLIP, CLIP).sum())
            self.n += len(x)

    @property
    def speech_frames(self) -> int:
        return self.n

    def mean_logit(self) -> float | None:
        """The call's score so far, or None with fewer than MIN_FRAMES gated frames."""
        return self.logit_sum / self.n if self.n >= MIN_FRAMES else None

    def nbytes(self) -> int:
        return self.features.nbytes() + self.norm.sum.nbytes + 32


class TtsDetector:
    def __init__(self, params: dict, threshold: float, platt: tuple[float, float], meta: dict):
        self.params = params
        self.threshold = float(threshold)
        self.platt = platt
        self.meta = meta

    @classmethod
    def load(cls, path: Path | str | None = None) -> "TtsDetector":
        p = Path(path) if path else DEFAULT_PATH
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT:
                    raise EngineError(f"TTS detector weights {p} are format {meta.get('format')!r}, "
                                      f"this code reads {FORMAT!r}")
                params = {k: z[k].astype(np.float64) for k in PARAM_KEYS}
                threshold = float(z["threshold"])
                platt = (float(z["platt"][0]), float(z["platt"][1]))
        except (OSError, KeyError, ValueError) as exc:
            raise EngineError(f"TTS detector weights {p} missing or unreadable: {exc}") from exc
        if params["mu"].shape != (DIM,):
            raise EngineError(f"TTS detector weights {p} expect {params['mu'].shape} features, code has {DIM}")
        return cls(params, threshold, platt, meta)

    @property
    def version(self) -> str:
        """The model file's id (e.g. "tts-frame-mlp-2026-11-30"), reported with every result."""
        return str(self.meta.get("id", "tts-unknown"))

    def stream(self) -> TtsStream:
        return TtsStream(self.params)

    def probability(self, logit: float) -> float:
        a, b = self.platt       # fitted on families and speakers the model did not see
        return float(1.0 / (1.0 + np.exp(-np.clip(a * logit + b, -40, 40))))

    def result(self, stream: TtsStream) -> TtsResult | None:
        """None until there is enough gated audio (MIN_FRAMES)."""
        m = stream.mean_logit()
        if m is None:
            return None
        p = self.probability(m)
        return TtsResult(TTS_DETECTED if p >= self.threshold else NO_TTS_DETECTED, p, stream.speech_frames)

    def score_pcm(self, pcm: np.ndarray, chunk: int = 1600) -> TtsResult | None:
        """Whole-file convenience (int16 8 kHz), fed in live-sized chunks."""
        st = self.stream()
        for i in range(0, len(pcm), chunk):
            st.add(pcm[i:i + chunk])
        return self.result(st)
