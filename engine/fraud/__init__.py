"""Fraud signals computed from audio: synthetic-speech detection (tts), audio fingerprints for
replay and duplicate detection (fingerprint), and the Aculab `pad_detected` decision (pad).
Pure computation, like the rest of the engine; docs/fraud-signals.md has the design and limits.
The training tools (tools/train_tts.py, tools/train_tts_corpus.py) are tooling, never imported here."""
from .features import FrameFeatures
from .fingerprint import FingerprintIndex, Fingerprinter, Match, fingerprint, match, pack, unpack
from .pad import pad_detected
from .tts import NO_TTS_DETECTED, TTS_DETECTED, TtsDetector, TtsResult, TtsStream

__all__ = ["FrameFeatures", "FingerprintIndex", "Fingerprinter", "Match", "fingerprint", "match", "pack", "unpack", "pad_detected",
           "NO_TTS_DETECTED", "TTS_DETECTED", "TtsDetector", "TtsResult", "TtsStream"]
