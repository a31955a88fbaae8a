"""The fraud signals' fast paths equal their definitions.

`FrameFeatures` computes the expensive features (periodicity, flatness, group delay, cepstral
peak) only for the frames the energy gate keeps, and the fingerprint pairs peaks with numpy
instead of a Python loop. Both were measured as a third of the gateway's CPU at 100 live calls
(docs/benchmarks.md), so they were rewritten; these tests hold them to the straightforward
computations below (the code they replaced), on real speech with pauses and line noise between
the turns, as a live call's customer channel carries."""
from __future__ import annotations

import importlib

import numpy as np
import scipy.fft
import scipy.ndimage

from engine.fraud import features as F
from engine.fraud.fingerprint import DF_MAX, DT_MAX, FAN_OUT, Fingerprinter
from support import protocol_audio
from tools.protocol import read_audio

fp_mod = importlib.import_module("engine.fraud.fingerprint")   # engine.fraud exports a function of that name


def _call() -> np.ndarray:
    """Two utterances with -60 dBFS line noise around and between them (the agent's turns)."""
    rng = np.random.default_rng(7)
    parts = []
    for name in ("1688_test0", "1688_enrol0"):
        parts += [np.clip(rng.normal(0, 33, 12000), -32768, 32767).astype(np.int16),
                  read_audio(protocol_audio("ls-other-tel", name))]
    parts.append(np.clip(rng.normal(0, 33, 9000), -32768, 32767).astype(np.int16))
    return np.concatenate(parts)


class _AllFrames(F.FrameFeatures):
    """The definition: every feature of every frame, then the gate."""

    def _frames(self, fr: np.ndarray) -> np.ndarray:
        st = F._setup()
        fr = fr - fr.mean(axis=1, keepdims=True)
        fr = np.concatenate([fr[:, :1], fr[:, 1:] - 0.97 * fr[:, :-1]], axis=1) * st["win"]
        X = scipy.fft.rfft(fr, F.NFFT, axis=1)
        spec = X.real ** 2 + X.imag ** 2 + 1e-12
        energy_db = 10 * np.log10(spec.sum(axis=1) / (F.NFFT * F.FRAME * 0.4) + 1e-12)
        cep = (np.log(spec @ st["fb"] + 1e-10) @ st["dct"])[:, 1:]
        n = len(cep)
        if not self.have_hist:
            self.hist[:] = cep[0]
            self.have_hist = True
        allc = np.concatenate([self.hist, cep])
        ctx = np.concatenate([allc[k:k + n] for k in range(F.CONTEXT)], axis=1)
        self.hist = allc[-(F.CONTEXT - 1):].copy()
        logsp = np.log(spec)
        flat = np.stack([np.exp(logsp[:, b].mean(axis=1)) / spec[:, b].mean(axis=1) for b in st["bands"]], axis=1)
        ac = scipy.fft.irfft(np.abs(scipy.fft.rfft(fr, 512, axis=1)) ** 2, 512, axis=1)[:, :F.LAG_MAX + 1]
        ac = ac / (ac[:, :1] + 1e-12)
        lag = F.LAG_MIN + np.argmax(ac[:, F.LAG_MIN:], axis=1)
        r = ac[np.arange(n), lag]
        lags = np.where(r > F.VOICED_R, lag.astype(np.float64), np.nan)
        prev_lags = np.concatenate([[self.prev_lag], lags[:-1]])
        self.prev_lag = float(lags[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            jit = np.abs(np.log(lags / prev_lags))
        jit = np.where(np.isfinite(jit), np.minimum(jit, 0.7), -0.1)
        Y = scipy.fft.rfft(fr * st["ramp"], F.NFFT, axis=1)
        smooth = scipy.ndimage.uniform_filter1d(spec, 9, axis=1, mode="nearest")
        tau = (X.real * Y.real + X.imag * Y.imag) / smooth ** F.MGD_GAMMA
        mgd = (np.sign(tau) * np.abs(tau) ** F.MGD_ALPHA) @ st["mgd_dct"]
        ceps = scipy.fft.irfft(logsp, F.NFFT, axis=1)[:, st["cpp_band"]]
        cpp = ceps.max(axis=1) - ceps.mean(axis=1)
        prev_db = np.concatenate([[energy_db[0] if self.prev_db is None else self.prev_db], energy_db[:-1]])
        self.prev_db = float(energy_db[-1])
        ddb = np.clip(energy_db - prev_db, -20, 20) / 10.0
        self.frames_seen += n
        run_max = np.maximum.accumulate(np.concatenate([[self.max_db], energy_db]))[1:]
        self.max_db = float(run_max[-1])
        keep = (energy_db > F.FLOOR_DB) & (energy_db > run_max - F.GATE_DB)
        if not keep.any():
            return np.zeros((0, F.DIM))
        return np.concatenate([ctx[keep], np.log(flat[keep] + 1e-6), r[keep, None], jit[keep, None],
                               ddb[keep, None], mgd[keep], cpp[keep, None]], axis=1)


def test_gated_frame_features_equal_the_all_frames_definition():
    x = _call()
    for chunk in (1600, 32000, 777):           # live 200 ms frames, the fraud worker's 4 s passes, odd
        fast, ref = F.FrameFeatures(), _AllFrames()
        a = np.concatenate([fast.add(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        b = np.concatenate([ref.add(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        assert a.shape == b.shape and 0.3 * len(x) / F.HOP < len(a) < 0.9 * len(x) / F.HOP
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
        assert fast.prev_lag == ref.prev_lag or (np.isnan(fast.prev_lag) and np.isnan(ref.prev_lag))
        assert fast.frames_seen == ref.frames_seen and fast.max_db == ref.max_db


def _pairs_definition(t, f, anchors):
    order = np.lexsort((f, t))
    t, f, anchors = t[order], f[order], anchors[order]
    hashes, times = [], []
    for i in np.nonzero(anchors)[0]:
        n, j = 0, i + 1
        while j < len(t) and t[j] - t[i] <= DT_MAX and n < FAN_OUT:
            dt, df = t[j] - t[i], int(f[j]) - int(f[i])
            if dt >= 1 and abs(df) <= DF_MAX:
                hashes.append((int(f[i]) << 14) | ((df + 128) << 6) | int(dt))
                times.append(int(t[i]))
                n += 1
            j += 1
    return np.asarray(hashes, np.uint32), np.asarray(times, np.uint32)


def test_fingerprint_pairs_and_peaks_equal_their_definitions():
    x = _call().astype(np.float32) / 32768
    spec = fp_mod._spectrogram(x)
    t, f = fp_mod._peaks(spec)
    s = spec[:, fp_mod.F_LO:fp_mod.F_HI]
    local = scipy.ndimage.maximum_filter(s, size=(2 * fp_mod.NB_T + 1, 2 * fp_mod.NB_F + 1), mode="constant",
                                         cval=-1e9)
    floor = np.median(s, axis=1, keepdims=True) + fp_mod.PEAK_FLOOR_DB
    rt, rf = np.nonzero((s == local) & (s > floor) & (s > fp_mod.ABS_FLOOR_DB))
    assert np.array_equal(t, rt) and np.array_equal(f, rf + fp_mod.F_LO) and len(t) > 200
    rng = np.random.default_rng(3)
    for anchors in (np.ones(len(t), bool), rng.random(len(t)) < 0.5, np.zeros(len(t), bool)):
        h, tt = fp_mod._pairs(t, f, anchors)
        rh, rtt = _pairs_definition(t, f, anchors)
        assert h.dtype == rh.dtype == np.uint32 and np.array_equal(h, rh) and np.array_equal(tt, rtt)
    one = fp_mod._pairs(t[:1], f[:1], np.ones(1, bool))          # a lone peak has no partner
    assert len(one[0]) == 0 and len(one[1]) == 0


def test_streamed_fingerprint_of_a_call_is_unchanged_by_chunking():
    x = _call()
    whole, parts = Fingerprinter(), Fingerprinter()
    whole.add(x)
    whole.finish()
    for i in range(0, len(x), 1600):
        parts.add(x[i:i + 1600])
    parts.finish()
    for a, b in zip(whole.landmarks(), parts.landmarks()):
        assert np.array_equal(a, b)


def test_pairing_in_bounded_chunks_equals_the_definition(monkeypatch):
    """Crafted audio can put thousands of peaks in one target zone (speech: a few dozen): the
    pairing works through the anchors in chunks of at most PAIR_CELLS candidates, with the same
    result as one pass, whatever the chunk size."""
    rng = np.random.default_rng(11)
    t = np.repeat(np.arange(60), 150)                     # 150 peaks in every frame, 60 frames
    f = np.tile(np.arange(4, 154), 60)
    anchors = rng.random(len(t)) < 0.3
    ref = _pairs_definition(t, f, anchors)
    for cells in (fp_mod.PAIR_CELLS, 5000, 1):
        monkeypatch.setattr(fp_mod, "PAIR_CELLS", cells)
        h, tt = fp_mod._pairs(t, f, anchors)
        assert np.array_equal(h, ref[0]) and np.array_equal(tt, ref[1])
    # speech-like sparse peaks in several chunks, too
    x = _call().astype(np.float32) / 32768
    pt, pf = fp_mod._peaks(fp_mod._spectrogram(x))
    monkeypatch.setattr(fp_mod, "PAIR_CELLS", 300)
    h, tt = fp_mod._pairs(pt, pf, np.ones(len(pt), bool))
    rh, rtt = _pairs_definition(pt, pf, np.ones(len(pt), bool))
    assert np.array_equal(h, rh) and np.array_equal(tt, rtt)
