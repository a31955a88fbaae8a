"""Presentation-attack decision in the Aculab Users API's terms (`pad_detected`).

Aculab's verify responses carry `"pad_detected": {"type": "TypeA" | "TypeB" | "TypeC"}` when
PAD is enabled and an attack is detected (A: duplicate audio, played before; B: replayed
recording or imitation; C: synthetic speech). vbgw maps its signals onto them:

* TypeA: the audio matches (fingerprint) an earlier *verification* audio of the same user;
* TypeB: it matches the user's *enrolment* audio (a recording of it played back);
* TypeC: the synthetic-speech detector says TTS_Detected.

One type is reported, in that order (an exact duplicate says more than a detector score).
"""
from __future__ import annotations

from typing import Iterable

from .fingerprint import Match
from .tts import TTS_DETECTED, TtsResult


def pad_detected(matches: Iterable[tuple[str, Match]], tts: TtsResult | None = None) -> dict | None:
    """`matches`: (kind of the stored fingerprint, "ENROL" or "VERIFY", match result) for
    each stored fingerprint of the user (other calls only). Returns the Aculab PADDetected
    object, or None when no attack is detected."""
    kinds = {kind for kind, m in matches if m.is_match}
    if "VERIFY" in kinds:
        return {"type": "TypeA"}
    if "ENROL" in kinds:
        return {"type": "TypeB"}
    if tts is not None and tts.label == TTS_DETECTED:
        return {"type": "TypeC"}
    return None
