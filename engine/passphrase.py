"""Text-dependent verification: does an attempt say the same passphrase as the registration?

The voice is checked by the speaker encoder (CAM++, text-independent); this module checks the
*content*: the attempt's speech frames are aligned by dynamic time warping (DTW) against the
user's registered utterances of the passphrase, and the alignment cost becomes a calibrated
content llr (log-likelihood ratio "same phrase" vs "another phrase"). The two are combined by
`text_dependent_llr` so that a text-dependent verification passes only when the voice AND the
phrase pass (docs/passphrase.md).

Why spectral templates of the user's own utterances (not a recogniser): the registered
utterances are the same speaker on (usually) the same kind of channel, so a speaker-dependent
template match is the classical, language-independent way to check a passphrase (it works for
any language and any phrase the user chooses, with no vocabulary), and no model weights are
needed.

What is kept per user (`PassphraseModel`, `to_bytes`/`from_bytes`): for each of at most
`MAX_TEMPLATES` registered utterances, its speech frames' normalised cepstra and deltas
(2 x N_CEPS values per 20 ms frame, float16): 2.4 kB per second of speech, never the audio
(a 2 s passphrase registered 3 times: about 15 kB). The cepstra are a spectral envelope:
from them a rough, unvoiced resynthesis of the phrase could be made, so the blob is biometric
data and must be deleted with the user (store it beside the voiceprint; it goes with it).

Pure numpy/scipy: no web code, no state beyond the objects passed in.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft

from .audio import check_pcm, fbank
from .types import SAMPLE_RATE, EngineError

FEATURE_ID = "mfcc12d-20ms-cmvn-v1"   # changes with the features: old templates become unusable
N_MELS = 24
N_CEPS = 12                   # c1..c12 (c0, the level, is left out: it says nothing of the words)
FRAME_MS = 25.0
SHIFT_MS = 20.0               # 20 ms frames: half the storage and DTW cost of 10 ms (no better in the pilot)
SPEECH_DB = 30.0              # a frame is speech when within this many dB of the utterance's loudest
FLOOR_DB = -60.0              # ... and above this absolute level (dBFS)
MIN_SPEECH_FRAMES = 10        # 0.2 s: less than this is not even one word
MAX_FRAMES = 500              # 10 s of speech per template: bounds storage and the DTW cost (~45 ms)
MAX_TEMPLATES = 5             # registered utterances kept per user (the most recent)
BAND = 0.4                    # DTW band: |i/n - j/m| <= BAND (no word squeezed into another's place)
MAX_LENGTH_RATIO = 3.0        # speech 3x longer or shorter than the registration is not the same phrase

_MAGIC = b"VBPP"
_VERSION = 1
DATA_DIR = Path(__file__).resolve().parent / "data"


class PassphraseError(EngineError):
    """A passphrase blob that cannot be read, or templates of another feature version."""

    code = "BAD_PASSPHRASE_MODEL"


# ----------------------------------------------------------------------------- features
def _dct_matrix() -> np.ndarray:
    d = scipy.fft.dct(np.eye(N_MELS), type=2, norm="ortho", axis=0)   # (N_MELS, N_MELS)
    return d[1:N_CEPS + 1].T.astype(np.float32)                       # (N_MELS, N_CEPS)


_DCT = _dct_matrix()


VAD_ON, VAD_OFF = 0.5, 0.35        # silero VAD hysteresis, as the engine's sessions use it


def vad_speech(vad, pcm: np.ndarray) -> np.ndarray:
    """Speech flags per 32 ms VAD chunk of a whole utterance (engine.vad.SileroVad, a fresh
    stream: thread-safe beside the engine's own sessions). Hysteresis: speech starts at
    p >= VAD_ON and lasts while p >= VAD_OFF."""
    from .vad import CHUNK, VadStream
    n = len(pcm) // CHUNK
    if n == 0:
        return np.zeros(0, bool)
    chunks = np.asarray(pcm[: n * CHUNK], np.float32).reshape(n, CHUNK) * (1.0 / 32768.0)
    probs = vad.probs_many([VadStream()], [chunks])[0]
    out, on = np.zeros(n, bool), False
    for i, p in enumerate(probs):
        on = bool(p >= (VAD_OFF if on else VAD_ON))
        out[i] = on
    return out


def _frame_levels(pcm: np.ndarray, n_frames: int) -> np.ndarray:
    flen, shift = int(SAMPLE_RATE * FRAME_MS / 1000), int(SAMPLE_RATE * SHIFT_MS / 1000)
    x = np.asarray(pcm, np.float64) / 32768.0
    fr = np.lib.stride_tricks.as_strided(x, (n_frames, flen), (x.strides[0] * shift, x.strides[0]))
    return 10.0 * np.log10(np.maximum((fr ** 2).mean(1), 1e-12))


def speech_frames(pcm: np.ndarray, n_frames: int, vad_chunks: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the feature frames to compare: frames in a VAD speech chunk (when
    `vad_chunks` is given) whose level is within SPEECH_DB of the loudest such frame and above
    FLOOR_DB (dBFS). Pauses between words and the silence or noise around the phrase are left
    out, so the alignment compares words, not how long or where the caller paused."""
    if n_frames <= 0:
        return np.zeros(0, bool)
    db = _frame_levels(pcm, n_frames)
    keep = db >= FLOOR_DB
    if vad_chunks is not None:
        from .vad import CHUNK
        flags = np.asarray(vad_chunks, bool)
        shift = int(SAMPLE_RATE * SHIFT_MS / 1000)
        chunk = (np.arange(n_frames) * shift + int(SAMPLE_RATE * FRAME_MS / 2000)) // CHUNK   # frame centre
        in_speech = np.zeros(n_frames, bool)
        inside = chunk < len(flags)
        in_speech[inside] = flags[chunk[inside]]
        keep &= in_speech
    if keep.any():
        keep &= db >= db[keep].max() - SPEECH_DB
    return keep


def phrase_features(pcm: np.ndarray, vad_chunks: np.ndarray | None = None) -> np.ndarray | None:
    """int16 8 kHz audio -> (T, 2*N_CEPS) float32 speech-frame features: cepstra c1..c12 and
    their deltas, mean- and variance-normalised over the speech frames (removes the channel's
    fixed colouring and level). `vad_chunks`: `vad_speech(vad, pcm)` (without it only levels pick the speech, which
    fails on noisy audio). None when there is less than MIN_SPEECH_FRAMES of speech."""
    pcm = check_pcm(pcm)
    logmel = fbank(pcm.astype(np.float32), sr=SAMPLE_RATE, num_mel_bins=N_MELS, frame_ms=FRAME_MS,
                   shift_ms=SHIFT_MS, mean_norm=False)
    keep = speech_frames(pcm, len(logmel), vad_chunks)
    if keep.sum() < MIN_SPEECH_FRAMES:
        return None
    ceps = logmel @ _DCT
    d = np.gradient(ceps, axis=0) if len(ceps) > 1 else np.zeros_like(ceps)
    x = np.concatenate([ceps, d], axis=1)[keep][:MAX_FRAMES]
    x = (x - x.mean(0, keepdims=True)) / (x.std(0, keepdims=True) + 1e-3)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- alignment
def _local_cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Frame-to-frame cost: cosine distance (0 same direction, 2 opposite)."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-6)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-6)
    return (1.0 - an @ bn.T).astype(np.float64)


def dtw_cost(a: np.ndarray, b: np.ndarray, band: float = BAND) -> float:
    """Mean frame cost of the best monotonic alignment of a onto b (symmetric DTW: a diagonal
    step costs twice, so every complete path weighs len(a) + len(b) and the normalised cost
    does not favour short paths). Cells with |i/n - j/m| > band are not allowed; inf when one
    has more than MAX_LENGTH_RATIO times the other's speech frames (not the same phrase).

    Vectorised over anti-diagonals: len(a) + len(b) numpy steps."""
    n, m = len(a), len(b)
    if n == 0 or m == 0 or max(n, m) > MAX_LENGTH_RATIO * min(n, m):
        return math.inf
    c = _local_cost(a, b)
    ii, jj = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    c[np.abs((ii + 0.5) / n - (jj + 0.5) / m) > band] = np.inf
    D = np.full((n + 1, m + 1), np.inf)
    D[0, 0] = 0.0
    for k in range(2, n + m + 1):            # k = i + j over 1-based cells
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        cij = c[i - 1, j - 1]
        D[i, j] = np.minimum(np.minimum(D[i - 1, j] + cij, D[i, j - 1] + cij), D[i - 1, j - 1] + 2 * cij)
    return float(D[n, m] / (n + m))


# ----------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class ContentCalibration:
    """DTW cost -> content llr = a * cost + b (logistic fit, same phrase vs another phrase of
    the same speaker, equal priors), and the content llr thresholds: `pass_llr` accepts
    `far_pass` of wrong-phrase attempts, `high_llr` only `far_high` of them (the content twins
    of the voice's TRUE_LOW and TRUE_HIGH)."""
    id: str
    a: float
    b: float
    pass_llr: float
    high_llr: float
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> "ContentCalibration":
        path = path or DATA_DIR / "calibration-passphrase.json"
        d = json.loads(Path(path).read_text())
        if d.get("feature_id") != FEATURE_ID:
            raise PassphraseError(f"{path} calibrates features {d.get('feature_id')!r}, not {FEATURE_ID!r}")
        return cls(d["id"], float(d["a"]), float(d["b"]), float(d["pass_llr"]), float(d["high_llr"]),
                   {k: v for k, v in d.items() if k not in ("id", "a", "b", "pass_llr", "high_llr")})

    def llr(self, cost: float) -> float:
        if not math.isfinite(cost):
            return self.a * 2.0 + self.b        # the worst possible cost (cosine distance 2)
        return self.a * cost + self.b


# ----------------------------------------------------------------------------- per user
@dataclass(frozen=True)
class ContentScore:
    cost: float               # mean DTW cost against the registered utterances (lower: closer)
    costs: tuple[float, ...]  # one per registered utterance
    llr: float                # calibrated content llr


@dataclass
class PassphraseModel:
    """A user's registered utterances of the passphrase, as speech-frame features.

    `add` keeps the MAX_TEMPLATES most recent; `score` aligns an attempt against each and
    averages the costs (averaging is more robust than the best match: one accidental close
    template does not carry a wrong phrase)."""
    templates: list[np.ndarray] = field(default_factory=list)
    feature_id: str = FEATURE_ID

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float32)
        if f.ndim != 2 or f.shape[1] != 2 * N_CEPS or not len(f):
            raise PassphraseError(f"features must be (T, {2 * N_CEPS}), got {f.shape}")
        self.templates.append(f[:MAX_FRAMES])
        del self.templates[:-MAX_TEMPLATES]

    def costs(self, attempt: np.ndarray) -> list[float]:
        if self.feature_id != FEATURE_ID:
            raise PassphraseError(f"templates are {self.feature_id!r}; this engine uses {FEATURE_ID!r}: "
                                  f"register the passphrase again")
        return [dtw_cost(attempt, t) for t in self.templates]

    def cost(self, attempt: np.ndarray) -> tuple[float, list[float]]:
        """(mean DTW cost over the registered utterances, each one's cost); inf when any
        alignment is impossible (the lengths are too different for the same phrase)."""
        if not self.templates:
            raise PassphraseError("no registered utterance to compare with")
        cs = self.costs(np.asarray(attempt, np.float32))
        return (float(np.mean(cs)) if all(math.isfinite(c) for c in cs) else math.inf), cs

    def score(self, attempt: np.ndarray, cal: ContentCalibration) -> ContentScore:
        cost, cs = self.cost(attempt)
        return ContentScore(cost, tuple(cs), cal.llr(cost))

    # -- storage -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """VBPP | version u8 | feature id (u8 length + ascii) | count u8 | per template:
        frames u16, dims u8, float16 little-endian frames x dims."""
        fid = self.feature_id.encode("ascii")
        out = [_MAGIC, struct.pack("<BB", _VERSION, len(fid)), fid, struct.pack("<B", len(self.templates))]
        for t in self.templates:
            out.append(struct.pack("<HB", t.shape[0], t.shape[1]))
            out.append(np.asarray(t, "<f2").tobytes())
        return b"".join(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "PassphraseModel":
        try:
            if blob[:4] != _MAGIC:
                raise ValueError("not a passphrase model")
            version, flen = struct.unpack_from("<BB", blob, 4)
            if version != _VERSION:
                raise ValueError(f"version {version}")
            pos = 6
            fid = blob[pos:pos + flen].decode("ascii")
            pos += flen
            (count,) = struct.unpack_from("<B", blob, pos)
            pos += 1
            if count > MAX_TEMPLATES:
                raise ValueError(f"{count} templates")
            templates = []
            for _ in range(count):
                frames, dims = struct.unpack_from("<HB", blob, pos)
                pos += 3
                if not 0 < frames <= MAX_FRAMES or dims == 0:
                    raise ValueError(f"template of {frames} x {dims}")
                size = frames * dims * 2
                if pos + size > len(blob):
                    raise ValueError("truncated")
                t = np.frombuffer(blob, "<f2", frames * dims, pos).reshape(frames, dims)
                templates.append(t.astype(np.float32))
                pos += size
            if pos != len(blob):
                raise ValueError("trailing bytes")
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise PassphraseError(f"unreadable passphrase model: {exc}") from None
        return cls(templates, fid)


# ----------------------------------------------------------------------------- combination
def text_dependent_llr(voice_llr: float, content_llr: float, voice_pass: float, voice_span: float,
                       content_pass: float, content_span: float) -> float:
    """The text-dependent score on the voice llr scale: each part's margin over its pass
    threshold in units of its span (pass -> high), the smaller of the two, mapped back onto
    the voice scale: voice_pass + voice_span * min(voice margin, content margin).

    So with the voice's own mapping (confidence = 2 ^ ((llr - pass) / span)), the text-dependent
    confidence is min(voice confidence, content confidence): >= 1.0 exactly when the voice
    passes AND the phrase passes; it equals the voice confidence whenever the phrase matches
    better than the voice does. The caller moves both pass thresholds by the sensitivity."""
    vm = (voice_llr - voice_pass) / voice_span
    cm = (content_llr - content_pass) / content_span
    return voice_pass + voice_span * min(vm, cm)
