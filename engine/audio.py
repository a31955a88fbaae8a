"""Audio front end: input checks, 8 -> 16 kHz resampling, Kaldi log-mel filterbank.

The engine takes int16 mono 8 kHz arrays and reads no files: WAV files are decoded (and other
rates resampled to 8 kHz) by connectors.codecs, for uploads and tools alike."""
from __future__ import annotations


import numpy as np
import scipy.fft
from scipy.signal import resample_poly

from .types import AudioError

INT16_SCALE = 1.0 / 32768.0


def check_pcm(pcm) -> np.ndarray:
    """Validate a whole-file input: int16 mono 8 kHz as a 1-D numpy array (AudioError if not)."""
    if not isinstance(pcm, np.ndarray):
        raise AudioError(f"audio must be a numpy int16 array, got {type(pcm).__name__}")
    if pcm.dtype != np.int16:
        raise AudioError(f"audio must be int16 L16 PCM at 8 kHz, got dtype {pcm.dtype}")
    if pcm.ndim != 1:
        raise AudioError(f"audio must be mono (1-D), got shape {pcm.shape}")
    return pcm


def coerce_frame(pcm) -> np.ndarray:
    """Best-effort conversion of a pushed frame to 1-D int16; never raises.

    Odd input (floats, NaN, wrong shape, bytes) is converted or, when hopeless, dropped
    (an empty array is returned) so that `EngineSession.push` never fails.
    """
    if type(pcm) is np.ndarray and pcm.dtype == np.int16 and pcm.ndim == 1:
        return pcm                 # what every connector pushes: nothing to check (per message)
    try:
        if isinstance(pcm, (bytes, bytearray, memoryview)):
            b = bytes(pcm)
            return np.frombuffer(b[: len(b) // 2 * 2], dtype="<i2").astype(np.int16)
        a = np.asarray(pcm)
        if a.size == 0:
            return np.zeros(0, np.int16)
        if a.ndim == 2 and a.shape[1] in (1, 2) and a.shape[0] > 2:
            a = a[:, 0]            # (N, channels): keep the first channel
        a = a.reshape(-1)
        if a.dtype == np.int16:
            return a
        if np.issubdtype(a.dtype, np.floating):
            a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
            return np.clip(np.round(a * 32767.0), -32768, 32767).astype(np.int16)
        if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            return np.clip(a.astype(np.int64), -32768, 32767).astype(np.int16)
    except Exception:  # noqa: BLE001 - push must never raise
        pass
    return np.zeros(0, np.int16)


def to_16k(x8k: np.ndarray) -> np.ndarray:
    """8 kHz -> 16 kHz, anti-aliased polyphase (scipy.signal.resample_poly), float32."""
    return resample_poly(np.asarray(x8k, dtype=np.float64), 2, 1).astype(np.float32)


# ----------------------------------------------------------------------------- fbank
_FB_CACHE: dict = {}


def _mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _fbank_setup(sr, num_bins, frame_len, low_freq=20.0, high_freq=0.0):
    key = (sr, num_bins, frame_len, low_freq, high_freq)
    if key in _FB_CACHE:
        return _FB_CACHE[key]
    n_fft = 1 << int(np.ceil(np.log2(frame_len)))
    nyq = sr / 2.0
    hi = high_freq if high_freq > 0 else nyq + high_freq
    mlo, mhi = _mel(low_freq), _mel(hi)
    delta = (mhi - mlo) / (num_bins + 1)
    fft_mel = _mel(sr / n_fft * np.arange(n_fft // 2))
    left = mlo + np.arange(num_bins)[:, None] * delta
    center = left + delta
    right = center + delta
    up = (fft_mel[None] - left) / (center - left)
    down = (right - fft_mel[None]) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    banks = np.pad(banks, ((0, 0), (0, 1)))  # Nyquist bin gets 0 weight
    n = np.arange(frame_len)
    win = (0.5 - 0.5 * np.cos(2 * np.pi * n / (frame_len - 1))) ** 0.85  # povey window
    _FB_CACHE[key] = (n_fft, banks.T.astype(np.float32), win.astype(np.float32))
    return _FB_CACHE[key]


def fbank(wav: np.ndarray, sr: int = 16000, num_mel_bins: int = 80, frame_ms: float = 25.0,
          shift_ms: float = 10.0, preemph: float = 0.97, mean_norm: bool = True) -> np.ndarray:
    """Kaldi-compatible log-mel filterbank (torchaudio.compliance.kaldi.fbank defaults,
    dither 0, snip_edges). Returns (T, num_mel_bins) float32, mean-normalised over time."""
    frame_len = int(sr * frame_ms / 1000)
    shift = int(sr * shift_ms / 1000)
    n_fft, banks, win = _fbank_setup(sr, num_mel_bins, frame_len)
    x = np.ascontiguousarray(wav, dtype=np.float32)
    if len(x) < frame_len:
        return np.zeros((0, num_mel_bins), np.float32)
    n_frames = 1 + (len(x) - frame_len) // shift
    fr = np.lib.stride_tricks.as_strided(
        x, (n_frames, frame_len), (x.strides[0] * shift, x.strides[0])).astype(np.float32)
    fr = fr - fr.mean(1, keepdims=True)
    prev = np.concatenate([fr[:, :1], fr[:, :-1]], axis=1)
    fr = (fr - preemph * prev) * win
    spec = scipy.fft.rfft(fr, n=n_fft, axis=1)   # float32 in, complex64 out
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    feat = np.log(np.maximum(power @ banks, np.finfo(np.float32).eps))
    if mean_norm:
        feat = feat - feat.mean(0, keepdims=True)
    return feat.astype(np.float32)


def campp_features(pcm8k: np.ndarray) -> np.ndarray:
    """int16 8 kHz speech -> (T, 80) CAM++ input features (16 kHz Kaldi fbank, mean-normalised).

    The waveform is scaled to [-1, 1) as 3D-Speaker does; a constant gain would only shift
    the log energies and cancels in the mean normalisation anyway.
    """
    x = to_16k(np.asarray(pcm8k, dtype=np.float32) * INT16_SCALE)
    return fbank(x, sr=16000, num_mel_bins=80, mean_norm=True)
