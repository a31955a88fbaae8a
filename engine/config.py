"""Engine configuration."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from .models import default_model_dir


class EngineConfig(BaseModel):
    encoder: Literal["campp", "ge2e"] = "campp"
    model_dir: Path = Field(default_factory=default_model_dir)
    # Where files derived from the models (the built CAM++ ONNX graph) are written when
    # model_dir has none prebuilt; None: model_dir itself. The gateway sets it to
    # <data_dir>/cache: it never writes into a model dir that may be read-only (an image's).
    cache_dir: Path | None = None
    vad_threshold: float = 0.5
    # Speech is embedded in windows of this many seconds of VAD-passed audio; the session
    # embedding is the speech-weighted mean of the window embeddings (docs/scoring.md).
    window_s: float = 10.0
    max_batch: int = 32
    max_backlog_s: float = 30.0
    threads: int = 2
    # Additions (not in the gateway contract, all optional):
    runtime: Literal["onnx", "numpy"] = "onnx"   # CAM++ runtime; numpy is the reference
    vad_pad_ms: int = 1024                       # audio kept around speech for the encoder
    scd_threshold: float = 4.0                   # speaker change when a window's llr < this (docs/scoring.md)
    max_pending_s: float = 20.0                  # per-session cap on unprocessed audio
    # Uploaded files (batch enrolment, blocklist and Aculab uploads) run on threads of their
    # own, after live calls' work, at this nice value (Linux): live scoring comes first.
    file_threads: int = Field(default=1, ge=1, le=16)
    file_nice: int = Field(default=10, ge=0, le=19)
