"""Streaming spectral statistics for the synthetic-speech (TTS) detector.

Per 25 ms frame (10 ms hop) of 8 kHz audio: 20 linear-frequency cepstral coefficients
(LFCC: 24 triangular filters spaced linearly over 0-4 kHz, log, DCT) and their first
differences. Frames are gated by energy (within GATE_DB of the loudest frame so far and
above FLOOR_DB); the detector's input is the mean and standard deviation of the gated
frames' 40-d vectors, four spectral-shape statistics (flatness, 3-4 kHz vs 0.3-1 kHz energy)
and four periodicity statistics (autocorrelation peak strength, pitch jitter): 88 values.

`LfccStats.add()` takes audio in pieces of any size and gives exactly the frames a single
pass over the whole would give (a tail of samples and the previous frame carry over), so
training (scripts) and live calls (gateway) use the same code path. Memory is constant:
running sums only."""
from __future__ import annotations

import numpy as np
import scipy.fft

SR = 8000
FRAME = 200            # 25 ms
HOP = 80               # 10 ms
NFFT = 256
N_FILT = 24
N_CEP = 20
GATE_DB = 35.0         # frames more than this below the loudest frame so far are not speech
FLOOR_DB = -65.0       # dBFS; anything quieter is silence whatever the loudest frame
MIN_FRAMES = 100       # 1 s of gated frames before a score is given
DIM = 4 * N_CEP + 8
LAG_MIN, LAG_MAX = 20, 160   # pitch 50-400 Hz
VOICED_R = 0.5

_SETUP: dict = {}


def _setup():
    if _SETUP:
        return _SETUP
    nbin = NFFT // 2 + 1
    freqs = np.linspace(0, SR / 2, nbin)
    edges = np.linspace(0, SR / 2, N_FILT + 2)
    fb = np.zeros((nbin, N_FILT), np.float64)
    for i in range(N_FILT):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[:, i] = np.maximum(0.0, np.minimum(up, down))
    n = np.arange(N_FILT)
    dct = np.cos(np.pi / N_FILT * (n[None, :] + 0.5) * np.arange(N_CEP)[:, None]) * np.sqrt(2.0 / N_FILT)
    win = np.hamming(FRAME)
    band_hi = freqs >= 3000.0
    band_lo = (freqs >= 300.0) & (freqs < 1000.0)
    _SETUP.update(fb=fb, dct=dct.T, win=win, hi=band_hi, lo=band_lo)
    return _SETUP


class LfccStats:
    """Running statistics of gated LFCC frames of one audio stream."""

    def __init__(self):
        self.tail = np.zeros(0, np.float64)
        self.prev: np.ndarray | None = None     # previous frame's cepstrum (for the delta)
        self.max_db = -np.inf
        self.n = 0
        self.s = np.zeros(2 * N_CEP)
        self.ss = np.zeros(2 * N_CEP)
        self.shape = np.zeros(4)                 # sums of: flatness, hi/lo ratio, their squares
        self.voice = np.zeros(5)                 # sums of: r, r^2, jitter, jitter^2, voiced pairs
        self.prev_lag: float | None = None
        self.frames_seen = 0

    def add(self, pcm) -> None:
        x = np.asarray(pcm)
        if x.dtype == np.int16:
            x = x.astype(np.float64) / 32768.0
        else:
            x = np.asarray(x, np.float64)
        x = np.concatenate([self.tail, x]) if len(self.tail) else x
        if len(x) < FRAME:
            self.tail = x
            return
        n_frames = 1 + (len(x) - FRAME) // HOP
        used = n_frames * HOP
        self.tail = x[used:].copy()
        fr = np.lib.stride_tricks.as_strided(x, (n_frames, FRAME), (x.strides[0] * HOP, x.strides[0]))
        self._frames(fr)

    def _frames(self, fr: np.ndarray) -> None:
        st = _setup()
        fr = fr - fr.mean(axis=1, keepdims=True)
        fr = np.concatenate([fr[:, :1], fr[:, 1:] - 0.97 * fr[:, :-1]], axis=1) * st["win"]
        spec = np.abs(scipy.fft.rfft(fr, NFFT, axis=1)) ** 2 + 1e-12
        energy_db = 10 * np.log10(spec.sum(axis=1) / (NFFT * FRAME * 0.4) + 1e-12)
        logfb = np.log(spec @ st["fb"] + 1e-10)
        cep = logfb @ st["dct"]
        prev = self.prev if self.prev is not None else cep[0]
        delta = np.diff(np.concatenate([prev[None], cep]), axis=0)
        self.prev = cep[-1].copy()
        # periodicity: normalised autocorrelation (from a 512-point power spectrum, no wrap)
        ac = scipy.fft.irfft(np.abs(scipy.fft.rfft(fr, 512, axis=1)) ** 2, 512, axis=1)[:, :LAG_MAX + 1]
        ac = ac / (ac[:, :1] + 1e-12)
        lag = LAG_MIN + np.argmax(ac[:, LAG_MIN:], axis=1)
        r = ac[np.arange(len(ac)), lag]
        voiced = r > VOICED_R
        lags = np.where(voiced, lag.astype(np.float64), np.nan)
        prev_lags = np.concatenate([[np.nan if self.prev_lag is None else self.prev_lag], lags[:-1]])
        self.prev_lag = float(lags[-1])
        jit = np.abs(np.log(lags / prev_lags))
        self.frames_seen += len(cep)
        # Gate: the running maximum is updated frame by frame in order, so chunking cannot
        # change which frames pass.
        run_max = np.maximum.accumulate(np.concatenate([[self.max_db], energy_db]))[1:]
        self.max_db = float(run_max[-1])
        keep = (energy_db > FLOOR_DB) & (energy_db > run_max - GATE_DB)
        if not keep.any():
            return
        v = np.concatenate([cep[keep], delta[keep]], axis=1)
        self.n += int(keep.sum())
        self.s += v.sum(axis=0)
        self.ss += (v * v).sum(axis=0)
        sp = spec[keep]
        flat = np.exp(np.mean(np.log(sp), axis=1)) / np.mean(sp, axis=1)
        ratio = np.log(sp[:, st["hi"]].sum(axis=1) / sp[:, st["lo"]].sum(axis=1))
        self.shape += [flat.sum(), ratio.sum(), (flat * flat).sum(), (ratio * ratio).sum()]
        rk, jk = r[keep], jit[keep]
        jk = jk[np.isfinite(jk)]
        jk = np.minimum(jk, 0.7)          # octave jumps are errors, not jitter
        self.voice += [rk.sum(), (rk * rk).sum(), jk.sum(), (jk * jk).sum(), len(jk)]

    @property
    def speech_frames(self) -> int:
        return self.n

    def vector(self) -> np.ndarray | None:
        """The detector's input (DIM floats), or None with fewer than MIN_FRAMES gated frames."""
        if self.n < MIN_FRAMES:
            return None
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 1e-10))
        m2 = self.shape[:2] / self.n
        s2 = np.sqrt(np.maximum(self.shape[2:] / self.n - m2 * m2, 1e-10))
        rm = self.voice[0] / self.n
        rs = np.sqrt(max(self.voice[1] / self.n - rm * rm, 1e-10))
        nv = max(self.voice[4], 1.0)
        jm = self.voice[2] / nv
        js = np.sqrt(max(self.voice[3] / nv - jm * jm, 1e-10))
        return np.concatenate([mean, std, m2, s2, [rm, rs, jm, js]]).astype(np.float64)

    def nbytes(self) -> int:
        return int(self.tail.nbytes + self.s.nbytes * 2 + self.shape.nbytes + 2 * N_CEP * 8 + 64)


def lfcc_vector(pcm, chunk: int = 1600) -> np.ndarray | None:
    """Whole-signal convenience: feed `pcm` in live-sized chunks (200 ms) and return the vector."""
    st = LfccStats()
    pcm = np.asarray(pcm)
    for i in range(0, len(pcm), chunk):
        st.add(pcm[i:i + chunk])
    return st.vector()
