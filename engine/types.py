"""Types shared between the engine and its callers (the gateway never reaches deeper).

The engine is pure computation: it takes normalised L16 8 kHz frames per dialog and
channel, gates them with a VAD, embeds customer speech and scores embeddings against
voiceprints. It knows nothing of HTTP, tokens, tenants or storage.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Channel = Literal["customer", "agent"]
SAMPLE_RATE = 8000

# Result bands of the seed's vb_verification enumeration that come from a score.
TRUE_BANDS = ("TRUE_HIGH", "TRUE_MEDIUM", "TRUE_LOW")
FALSE_BANDS = ("FALSE_LOW", "FALSE_MEDIUM", "FALSE_HIGH")


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "ENGINE_ERROR"


class ModelFileError(EngineError):
    """A model file is missing or its sha256 does not match; the message names the fix."""

    code = "MODEL_MISSING"


class AudioError(EngineError):
    """Audio the engine cannot use (wrong rate, unreadable file, not audio)."""

    code = "BAD_AUDIO"


@dataclass(frozen=True)
class SpeechLimits:
    """Net-speech milestones (milliseconds of VAD-gated customer speech) for one dialog."""

    early_ms: int = 2000     # first EARLY score
    verify_ms: int = 5000    # NORMAL score
    enrol_ms: int = 10000    # minimum for an enrolment
    refine_ms: int = 5000    # after NORMAL, a refined NORMAL every this much new speech


@dataclass(frozen=True)
class ModelInfo:
    """Fills the voiceprint block of vb_enrolment and the model fields of vb_verification."""

    model: str               # e.g. "campplus_cn_en_common"
    extractor_version: str   # e.g. "campp-onnx-1"
    method: str              # e.g. "cosine+linear-calibration"
    plda_version: str        # calibration id, e.g. "cal-2026-11-23-fsdd+ls"
    sw_version: str          # vbgw version
    dim: int                 # embedding dimension


@dataclass(frozen=True)
class Embedding:
    """An L2-normalised speaker embedding and how much speech it was built from."""

    vector: np.ndarray       # float32 (dim,), L2-normalised
    speech_ms: int
    model: str

    @property
    def speech_frames(self) -> int:
        """10 ms speech frames, the unit of the seed's speech_frames / frame_count."""
        return self.speech_ms // 10


@dataclass(frozen=True)
class Score:
    cosine: float
    llr: float               # calibrated natural-log likelihood ratio
    llr_norm: float          # llr / sqrt(speech seconds), see docs/scoring.md
    bio_score: float         # calibrated posterior P(target | score) at prior 0.5, in [0, 1]


@dataclass(frozen=True)
class BandTargets:
    """A VB profile's bands as target error rates, turned into llr thresholds by the engine.

    TRUE_HIGH means the score is above the threshold at which only `far_high` of impostors
    are accepted, and so on; FALSE_HIGH means below the threshold at which only `frr_high`
    of genuine callers score, and so on.
    """

    far_high: float = 0.0005
    far_medium: float = 0.005
    far_low: float = 0.02
    frr_high: float = 0.005
    frr_medium: float = 0.02
    frr_low: float = 0.10


@dataclass(frozen=True)
class SpeakerChange:
    user_changed: bool
    scd_llr: float | None
    scd_nllr: float | None


@dataclass(frozen=True)
class SpeechProgress:
    """Emitted whenever the dialog's net customer speech grows (at most every 200 ms)."""

    dialog_id: str
    speech_ms: int


class MilestoneKind(enum.StrEnum):
    """The speech milestones of a call: EARLY (a first score at early_ms of speech), NORMAL (at
    verify_ms, then refined every refine_ms). A str: results and metrics carry the name."""
    EARLY = "EARLY"
    NORMAL = "NORMAL"


@dataclass(frozen=True)
class Milestone:
    """Emitted when customer speech reaches early_ms, verify_ms, then every refine_ms."""

    dialog_id: str
    kind: MilestoneKind
    embedding: Embedding
    speaker_change: SpeakerChange
    delayed: bool = False    # computed late because the worker was overloaded
    arrived: float | None = None  # time.monotonic() when the audio that reached it arrived


SessionEvent = SpeechProgress | Milestone


@dataclass
class EngineStats:
    sessions: int = 0
    queue_depth: int = 0
    audio_seconds: float = 0.0     # audio processed (VAD) since start
    speech_seconds: float = 0.0    # speech embedded since start
    overloaded: bool = False
    extra: dict = field(default_factory=dict)
