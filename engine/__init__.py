"""vbgw scoring engine: VAD, speaker embeddings, calibrated scores (see docs/scoring.md)."""
from .config import EngineConfig
from .facade import Engine, EngineSession, FileEmbedder
from .models import fetch_models, model_path
from .types import (SAMPLE_RATE, AudioError, BandTargets, Channel, Embedding, EngineError,
                    EngineStats, Milestone, MilestoneKind, ModelFileError, ModelInfo, Score, SessionEvent,
                    SpeakerChange, SpeechLimits, SpeechProgress)

__all__ = [
    "Engine", "EngineConfig", "EngineSession", "FileEmbedder", "fetch_models", "model_path", "SAMPLE_RATE",
    "AudioError", "BandTargets", "Channel", "Embedding", "EngineError", "EngineStats",
    "Milestone", "MilestoneKind", "ModelFileError", "ModelInfo", "Score", "SessionEvent", "SpeakerChange",
    "SpeechLimits", "SpeechProgress",
]
