"""Audio codecs shared by the connectors: G.711 mu-law / A-law, L16, a streaming
anti-aliased resampler to 8 kHz, and WAV file decoding.

The WAV decoder here is the only one: uploads and recordings (iter_wav_8k, block by block),
the stream client (read_wav, at the file's own rate) and the tools (read_wav_8k: calibration,
benchmarks and tests read trial protocols through it) decode with the same libsndfile reading
and resample with the same StreamResampler. The channel rule is one too: a multi-channel file
gives ONE channel, never a mix: channel 0 unless the caller names another (Genesys recordings
put the customer first; a provider's channel map names it for recordings,
gateway/services/recordings/media.py). Mixing would put the agent's voice into the customer's."""
from __future__ import annotations

import io
import sys
from collections.abc import Container, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import firwin

if sys.version_info >= (3, 13):  # pragma: no cover - audioop-lts provides it there
    import audioop  # type: ignore[import-not-found]
else:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

from connectors.base import SAMPLE_RATE, ConnectorError

ENCODINGS = ("l16", "mulaw", "alaw")
SUPPORTED_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# Recording files (batch enrolment from CCaaS recordings) may also be at studio rates.
FILE_RATES = SUPPORTED_RATES + (64000, 88200, 96000)


@dataclass(frozen=True)
class ResamplableRates(Container[int]):
    """Every whole multiple of 25 Hz from `lo` to `hi` Hz (10 kHz, 96 kHz, 176.4 kHz, ... as well
    as the usual rates): a `rates` argument for files whose only rule is a minimum rate (the
    Aculab Users API). The ratio to 8 kHz of such a rate reduces to at most 320/7680, which
    bounds StreamResampler's filter (at most ~185k taps, built once per file); an odd rate
    such as 44101 Hz would need millions of taps, so it is refused, not approximated."""
    lo: int
    hi: int

    def __contains__(self, rate: object) -> bool:
        return isinstance(rate, int) and self.lo <= rate <= self.hi and rate % 25 == 0


# libsndfile's names for WAV: plain, WAVE_FORMAT_EXTENSIBLE, and RF64 (WAV over 4 GB).
WAV_FORMATS = ("WAV", "WAVEX", "RF64")


def decode(payload: bytes, encoding: str) -> np.ndarray:
    """Wire bytes -> int16 samples. L16 is little-endian signed 16-bit."""
    if encoding == "l16":
        if len(payload) % 2:
            raise ConnectorError("ODD_LENGTH", f"L16 audio needs an even number of bytes, got {len(payload)}", 1007)
        return np.frombuffer(payload, dtype="<i2").astype(np.int16, copy=False)
    if encoding == "mulaw":
        return np.frombuffer(audioop.ulaw2lin(payload, 2), dtype="<i2")
    if encoding == "alaw":
        return np.frombuffer(audioop.alaw2lin(payload, 2), dtype="<i2")
    raise ConnectorError("BAD_ENCODING", f"unsupported encoding {encoding!r}; use one of {', '.join(ENCODINGS)}", 1003)


def encode_mulaw(samples: np.ndarray) -> bytes:
    return audioop.lin2ulaw(np.asarray(samples, dtype="<i2").tobytes(), 2)


class StreamResampler:
    """Rational-ratio polyphase resampler with a Kaiser-windowed low-pass, keeping filter
    history between chunks so a stream resampled in pieces equals the whole resampled at once."""

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE, taps_per_phase: int = 24):
        ratio = Fraction(rate_out, rate_in)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.identity = self.up == self.down == 1
        if self.identity:
            return
        cutoff = 0.95 / max(self.up, self.down)  # normalised to the up-sampled Nyquist
        n = taps_per_phase * max(self.up, self.down)
        n += (-n) % self.up  # whole number of taps per phase
        h = firwin(n, cutoff, window=("kaiser", 8.0)) * self.up
        # Sub-filter per phase: phase p uses taps h[p], h[p + up], ...
        self.phases = np.stack([h[p::self.up] for p in range(self.up)]).astype(np.float64)
        self.k = self.phases.shape[1]
        self.history = np.zeros(self.k - 1, np.float64)
        self.next_out = 0       # index of the next output sample, in output samples
        self.consumed = 0       # input samples consumed so far (history excluded)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if self.identity:
            return x.astype(np.int16, copy=False)
        buf = np.concatenate([self.history, x.astype(np.float64)])
        total_in = self.consumed + len(x)
        # output n uses input index floor(n * down / up) as its newest sample
        last_n = (total_in * self.up - 1) // self.down if total_in else -1
        n = np.arange(self.next_out, last_n + 1)
        if len(n) == 0:
            self.history = buf[-(self.k - 1):] if self.k > 1 else buf[:0]
            self.consumed = total_in
            return np.zeros(0, np.int16)
        t = n * self.down
        idx = t // self.up - self.consumed + (self.k - 1)   # position in buf of the newest input
        phase = t % self.up
        gather = buf[idx[:, None] - np.arange(self.k)[None, :]]
        y = np.einsum("ij,ij->i", gather, self.phases[phase])
        self.next_out = last_n + 1
        self.history = buf[-(self.k - 1):]
        self.consumed = total_in
        return np.clip(np.round(y), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def _open_wav(data: bytes, rates: Container[int] = SUPPORTED_RATES):
    import soundfile as sf
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - soundfile raises RuntimeError/LibsndfileError for junk
        raise ConnectorError("BAD_AUDIO", f"not a readable WAV file: {soundfile_reason(exc)}", 1003) from None
    if f.format not in WAV_FORMATS:
        f.close()
        raise ConnectorError("BAD_AUDIO", f"expected a WAV file, got {f.format}", 1003)
    if f.samplerate not in rates:
        f.close()
        raise ConnectorError("BAD_SAMPLE_RATE", f"unsupported sample rate {f.samplerate}", 1003)
    return f


def _read_int16(f, frames: int = -1) -> np.ndarray:
    """The next `frames` frames (all: -1) as int16, frames x channels. A float WAV is read as
    float and scaled: libsndfile's own float -> int16 read does not scale, so a float file's
    speech (|x| < 0.5) came out as silence."""
    if f.subtype in ("FLOAT", "DOUBLE"):
        x = np.nan_to_num(f.read(frames, dtype="float32", always_2d=True), nan=0.0, posinf=1.0, neginf=-1.0)
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    return f.read(frames, dtype="int16", always_2d=True)


def wav_info(data: bytes, rates: Container[int] = SUPPORTED_RATES) -> WavInfo:
    """A WAV file's format and length, from its header (nothing is decoded)."""
    with _open_wav(data, rates) as f:
        return WavInfo(f.samplerate, f.channels, f.frames, f.subtype)


def iter_wav_8k(data: bytes, block_s: float = 5.0, channel: int = 0,
                rates: Container[int] = SUPPORTED_RATES) -> Iterator[np.ndarray]:
    """Decode a WAV file (as read_wav) to int16 mono 8 kHz, block by block: at most
    `block_s` of input audio is decoded at a time, so memory stays a few blocks whatever the
    file's length (the whole-file path held the file as int16 and, resampling, a float64
    matrix of taps x output samples: gigabytes for a long 48 kHz upload). The blocks joined
    equal the whole file resampled at once (StreamResampler is chunk-exact; read_wav_8k joins
    them). `channel`: which channel of a multi-channel file is kept (a recording's customer side)."""
    f = _open_wav(data, rates)
    if not 0 <= channel < f.channels:
        f.close()
        raise ConnectorError("BAD_CHANNEL", f"channel {channel} of a {f.channels}-channel file", 1003)
    try:
        resampler = StreamResampler(f.samplerate)
        step = max(1, int(block_s * f.samplerate))
        while True:
            try:
                block = _read_int16(f, step)
            except Exception as exc:  # noqa: BLE001 - a truncated or corrupt body
                raise ConnectorError("BAD_AUDIO", f"the WAV data cannot be decoded: {soundfile_reason(exc)}",
                                     1003) from None
            if not len(block):
                return
            out = resampler.process(np.ascontiguousarray(block[:, channel]))
            if len(out):
                yield out
    finally:
        f.close()


def read_wav(data: bytes, channel: int = 0, rates: Container[int] = SUPPORTED_RATES) -> tuple[np.ndarray, int]:
    """A whole WAV file (PCM 8/16/24/32-bit, float, mu-law, A-law; WAVE_FORMAT_EXTENSIBLE, RF64)
    as int16 mono at its own rate: channel `channel` (see the module docstring)."""
    f = _open_wav(data, rates)
    try:
        if not 0 <= channel < f.channels:
            raise ConnectorError("BAD_CHANNEL", f"channel {channel} of a {f.channels}-channel file", 1003)
        try:
            audio = _read_int16(f)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt body
            raise ConnectorError("BAD_AUDIO", f"the WAV data cannot be decoded: {soundfile_reason(exc)}",
                                     1003) from None
        return np.ascontiguousarray(audio[:, channel]), f.samplerate
    finally:
        f.close()


def read_wav_8k(data: bytes, channel: int = 0, rates: Container[int] = FILE_RATES) -> np.ndarray:
    """A whole WAV file as int16 mono 8 kHz: iter_wav_8k's blocks joined (the decoder and
    resampler of uploads; the tools' and tests' reader of trial protocols)."""
    return np.concatenate([np.zeros(0, np.int16), *iter_wav_8k(data, 60.0, channel, rates)])


def soundfile_reason(exc: Exception) -> str:
    """libsndfile's own reason ("Format not recognised."), without the "Error opening
    <_io.BytesIO object at 0x...>" prefix that soundfile puts in front of it."""
    reason = getattr(exc, "error_string", None)
    if not isinstance(reason, str) or not reason:
        reason = str(exc).rpartition(": ")[2] or "unreadable audio"
    return reason[:200]
