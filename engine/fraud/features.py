"""Streaming frame features for the synthetic-speech (TTS) detector.

Per 25 ms frame (10 ms hop) of 8 kHz audio, after pre-emphasis and a Hamming window, from one
256-point power spectrum and one 512-point autocorrelation:

* LFCC c1..c19 (24 triangular filters spaced linearly over 0-4 kHz, log, DCT; c0, the level,
  is left out) of the frame and of the two frames before it (57 values: the short-time
  trajectory, where vocoders and concatenation smooth or jump);
* spectral flatness in four 1 kHz bands (harmonic vs noise-like energy per band: vocoders get
  the balance of periodic and aperiodic energy wrong, most visibly above 2 kHz);
* periodicity (normalised autocorrelation peak, 50-400 Hz), the pitch-period change from the
  previous voiced frame (jitter), and the frame-to-frame level change (shimmer-like): 3 values;
* the modified group delay cepstrum c0..c19 (phase: one more FFT, of n*x[n]) and the cepstral
  peak prominence (how clearly harmonic the frame is): 21 values.

85 values per frame. Frames are gated by energy (within GATE_DB of the loudest frame so far and
above FLOOR_DB): only gated frames are features. `FrameFeatures.add()` takes audio in pieces of
any size and gives exactly the frames one pass over the whole would give (a sample tail and the
last frames' state carry over), so training (tooling) and live calls (gateway) share the code.
State is constant in size."""
from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.ndimage

SR = 8000
FRAME = 200            # 25 ms
HOP = 80               # 10 ms
NFFT = 256
N_FILT = 24
N_CEP = 20             # c0..c19; c0 is not a feature
CONTEXT = 3            # this frame and the two before it
GATE_DB = 35.0         # frames more than this below the loudest frame so far are not speech
FLOOR_DB = -65.0       # dBFS; anything quieter is silence whatever the loudest frame
LAG_MIN, LAG_MAX = 20, 160   # pitch 50-400 Hz
VOICED_R = 0.5
BLOCK = 64             # frames per numpy pass
N_MGD = 20             # modified group delay cepstrum, c0..c19
MGD_GAMMA, MGD_ALPHA = 0.9, 0.4
DIM = CONTEXT * (N_CEP - 1) + 4 + 3 + N_MGD + 1

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
    # the bins of each band, as slices (they are contiguous): no boolean-mask copies per frame
    bands = []
    for lo, hi in ((50, 1000), (1000, 2000), (2000, 3000), (3000, 3950)):
        sel = np.flatnonzero((freqs >= lo) & (freqs < hi))
        bands.append(slice(int(sel[0]), int(sel[-1]) + 1))
    k = np.arange(nbin)
    mgd_dct = np.cos(np.pi / nbin * (k[:, None] + 0.5) * np.arange(N_MGD)[None, :]) * np.sqrt(2.0 / nbin)
    quef = np.arange(NFFT)
    _SETUP.update(fb=fb, dct=dct.T, win=np.hamming(FRAME), bands=bands, mgd_dct=mgd_dct,
                  ramp=np.arange(FRAME, dtype=np.float64), cpp_band=(quef >= LAG_MIN) & (quef <= LAG_MAX))
    return _SETUP


class FrameFeatures:
    """Gated per-frame feature vectors of one audio stream, computed as the audio arrives."""

    def __init__(self):
        self.tail = np.zeros(0, np.float64)
        self.hist = np.zeros((CONTEXT - 1, N_CEP - 1))     # the previous frames' c1..c19
        self.have_hist = False
        self.prev_db: float | None = None
        self.prev_lag = np.nan
        self.max_db = -np.inf
        self.frames_seen = 0

    def add(self, pcm) -> np.ndarray:
        """Feed audio (int16 or float in [-1, 1)); returns the new gated frames' features (n, DIM)."""
        x = np.asarray(pcm)
        x = x.astype(np.float64) / 32768.0 if x.dtype == np.int16 else np.asarray(x, np.float64)
        x = np.concatenate([self.tail, x]) if len(self.tail) else x
        if len(x) < FRAME:
            self.tail = x
            return np.zeros((0, DIM))
        n_frames = 1 + (len(x) - FRAME) // HOP
        self.tail = x[n_frames * HOP:].copy()
        fr = np.lib.stride_tricks.as_strided(x, (n_frames, FRAME), (x.strides[0] * HOP, x.strides[0]))
        # blocks of BLOCK frames: the FFT buffers stay in cache (4 s in one piece cost 2x per second)
        out = [self._frames(fr[i:i + BLOCK]) for i in range(0, n_frames, BLOCK)]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _frames(self, fr: np.ndarray) -> np.ndarray:
        st = _setup()
        fr = fr - fr.mean(axis=1, keepdims=True)
        fr = np.concatenate([fr[:, :1], fr[:, 1:] - 0.97 * fr[:, :-1]], axis=1) * st["win"]
        X = scipy.fft.rfft(fr, NFFT, axis=1)
        spec = X.real ** 2 + X.imag ** 2 + 1e-12
        energy_db = 10 * np.log10(spec.sum(axis=1) / (NFFT * FRAME * 0.4) + 1e-12)
        cep = (np.log(spec @ st["fb"] + 1e-10) @ st["dct"])[:, 1:]
        n = len(cep)
        if not self.have_hist:
            self.hist[:] = cep[0]
            self.have_hist = True
        allc = np.concatenate([self.hist, cep])
        self.hist = allc[-(CONTEXT - 1):].copy()
        prev_db = np.concatenate([[energy_db[0] if self.prev_db is None else self.prev_db], energy_db[:-1]])
        self.prev_db = float(energy_db[-1])
        self.frames_seen += n
        # Gate: the running maximum is updated frame by frame in order, so chunking cannot
        # change which frames pass.
        run_max = np.maximum.accumulate(np.concatenate([[self.max_db], energy_db]))[1:]
        self.max_db = float(run_max[-1])
        keep = (energy_db > FLOOR_DB) & (energy_db > run_max - GATE_DB)
        # Everything below is computed for the gated frames only (most of a call's customer
        # audio is the agent's turns and pauses): the periodicity also for the frame before
        # each gated one (its jitter) and for the last frame (the next block's).
        need = keep.copy()
        need[:-1] |= keep[1:]
        need[-1] = True
        idx = np.flatnonzero(need)
        F = scipy.fft.rfft(fr[idx], 512, axis=1)
        ac = scipy.fft.irfft(F.real ** 2 + F.imag ** 2, 512, axis=1)[:, :LAG_MAX + 1]
        ac = ac / (ac[:, :1] + 1e-12)
        lag_n = LAG_MIN + np.argmax(ac[:, LAG_MIN:], axis=1)
        r_n = ac[np.arange(len(idx)), lag_n]
        lags = np.full(n, np.nan)
        lags[idx] = np.where(r_n > VOICED_R, lag_n.astype(np.float64), np.nan)
        prev_lags = np.concatenate([[self.prev_lag], lags[:-1]])
        self.prev_lag = float(lags[-1])
        if not keep.any():
            return np.zeros((0, DIM))
        k = np.flatnonzero(keep)
        r = np.empty(n)
        r[idx] = r_n
        r = r[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            jit = np.abs(np.log(lags[k] / prev_lags[k]))
        jit = np.where(np.isfinite(jit), np.minimum(jit, 0.7), -0.1)   # -0.1: not two voiced frames in a row
        ctx = np.concatenate([allc[k + j] for j in range(CONTEXT)], axis=1)
        spec_k, Xk, frk = spec[k], X[k], fr[k]
        logsp = np.log(spec_k)
        flat = np.stack([np.exp(logsp[:, b].mean(axis=1)) / spec_k[:, b].mean(axis=1) for b in st["bands"]], axis=1)
        # modified group delay (phase: vocoders' excitation and phase models leave their mark)
        Y = scipy.fft.rfft(frk * st["ramp"], NFFT, axis=1)
        smooth = scipy.ndimage.uniform_filter1d(spec_k, 9, axis=1, mode="nearest")
        tau = (Xk.real * Y.real + Xk.imag * Y.imag) / smooth ** MGD_GAMMA
        mgd = (np.sign(tau) * np.abs(tau) ** MGD_ALPHA) @ st["mgd_dct"]
        # cepstral peak prominence: how clearly harmonic the frame is
        ceps = scipy.fft.irfft(logsp, NFFT, axis=1)[:, st["cpp_band"]]
        cpp = ceps.max(axis=1) - ceps.mean(axis=1)
        ddb = np.clip(energy_db[k] - prev_db[k], -20, 20) / 10.0
        return np.concatenate([ctx, np.log(flat + 1e-6), r[:, None], jit[:, None],
                               ddb[:, None], mgd, cpp[:, None]], axis=1)

    def nbytes(self) -> int:
        return int(self.tail.nbytes + self.hist.nbytes + 64)


def frame_features(pcm, chunk: int = 1600) -> np.ndarray:
    """Whole-signal convenience: feed `pcm` in live-sized chunks (200 ms); all gated frames."""
    st = FrameFeatures()
    pcm = np.asarray(pcm)
    parts = [st.add(pcm[i:i + chunk]) for i in range(0, len(pcm), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, DIM))


CMN_PRIOR_FRAMES = 100   # the prior mean counts as this many frames (1 s) in the running mean


class RunningMeanNorm:
    """Causal per-call mean normalisation: each gated frame minus the mean of the call's frames
    so far (itself included), the mean starting from a prior worth CMN_PRIOR_FRAMES frames. It
    takes away what is constant over a call (the caller's average spectrum and phase profile,
    the handset, the line), so the detector judges how frames behave rather than whose voice or
    which channel it is: with 17 real speakers to learn from, an unnormalised model learnt the
    training voices as "real" and flagged new voices. Chunking cannot change the result."""

    def __init__(self, prior: np.ndarray):
        self.prior = np.asarray(prior, np.float64)
        self.sum = np.zeros(len(self.prior))
        self.n = 0

    def apply(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return x
        x = np.asarray(x, np.float64)
        cum = np.cumsum(x, axis=0) + self.sum + CMN_PRIOR_FRAMES * self.prior
        cnt = CMN_PRIOR_FRAMES + self.n + np.arange(1, len(x) + 1)
        self.sum = self.sum + x.sum(axis=0)
        self.n += len(x)
        return x - cum / cnt[:, None]
