"""Torch-free numpy re-implementation of Resemblyzer's GE2E voice encoder.

Mirrors resemblyzer 0.1.4 (audio.py / voice_encoder.py / hparams.py):
  16 kHz input, 40-band Slaney mel power spectrogram (n_fft=400, hop=160, hann,
  centred with zero padding, as librosa>=0.10), 3-layer LSTM(40->256), Linear(256->256)
  + ReLU + L2 norm per 160-frame partial, partials at `rate`=1.3/s (~52% overlap),
  averaged and L2-normalised.
Weights are read from the wheel's resemblyzer/pretrained.pt with engine.torchload.

In vbgw the audio reaching the encoder is already gated by the silero VAD, so
resemblyzer's webrtcvad silence trimming is not applied; the -30 dBFS volume
normalisation is.
"""
from __future__ import annotations

import numpy as np

from . import torchload
from .audio import INT16_SCALE, to_16k

SR = 16000
N_FFT = 400
HOP = 160
N_MELS = 40
PARTIAL_FRAMES = 160
INT16_MAX = 2 ** 15 - 1


# ----------------------------------------------------------------------------- mel
def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filterbank(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=None):
    """Same as librosa.filters.mel(htk=False, norm='slaney')."""
    fmax = sr / 2.0 if fmax is None else fmax
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)


_FB = mel_filterbank()
_WIN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic hann


def mel_spectrogram(wav):
    """(n_frames, 40) float32 mel power spectrogram, like resemblyzer.audio.wav_to_mel_spectrogram."""
    wav = np.asarray(wav, dtype=np.float32)
    y = np.pad(wav, (N_FFT // 2, N_FFT // 2), mode="constant")
    n_frames = 1 + (len(y) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(n_frames, N_FFT), strides=(y.strides[0] * HOP, y.strides[0]))
    spec = np.fft.rfft(frames * _WIN, axis=1)
    power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
    return power @ _FB.T


# ----------------------------------------------------------------------------- preprocessing
def normalize_volume(wav, target_dbfs=-30.0, increase_only=True):
    rms = np.sqrt(np.mean((wav * INT16_MAX) ** 2))
    if rms <= 0:
        return wav
    change = target_dbfs - 20 * np.log10(rms / INT16_MAX)
    if change < 0 and increase_only:
        return wav
    return wav * (10 ** (change / 20))


# ----------------------------------------------------------------------------- model
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class GE2EEncoder:
    runtime = "numpy"
    dim = 256

    def __init__(self, weights_path):
        sd = torchload.flat_state_dict(torchload.load(weights_path))
        p = {k[len("model_state."):]: v.astype(np.float32) for k, v in sd.items()
             if k.startswith("model_state.")}
        self.layers = []
        for l in range(3):
            self.layers.append((np.ascontiguousarray(p[f"lstm.weight_ih_l{l}"].T),
                                np.ascontiguousarray(p[f"lstm.weight_hh_l{l}"].T),
                                p[f"lstm.bias_ih_l{l}"] + p[f"lstm.bias_hh_l{l}"]))
        self.w_lin = np.ascontiguousarray(p["linear.weight"].T)
        self.b_lin = p["linear.bias"]

    def forward(self, mels):
        """mels: (B, T, 40) float32 -> (B, 256) L2-normalised embeddings."""
        x = np.asarray(mels, dtype=np.float32)
        B, T, _ = x.shape
        H = 256
        for (w_ih, w_hh, b) in self.layers:
            gx = (x.reshape(B * T, -1) @ w_ih + b).reshape(B, T, 4 * H)
            h = np.zeros((B, H), np.float32)
            c = np.zeros((B, H), np.float32)
            out = np.empty((B, T, H), np.float32)
            for t in range(T):
                g = gx[:, t] + h @ w_hh
                i = _sigmoid(g[:, :H])
                f = _sigmoid(g[:, H:2 * H])
                gg = np.tanh(g[:, 2 * H:3 * H])
                o = _sigmoid(g[:, 3 * H:])
                c = f * c + i * gg
                h = o * np.tanh(c)
                out[:, t] = h
            x = out
        e = np.maximum(h @ self.w_lin + self.b_lin, 0)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    @staticmethod
    def partial_slices(n_samples, rate=1.3, min_coverage=0.75):
        """resemblyzer.VoiceEncoder.compute_partial_slices."""
        n_frames = int(np.ceil((n_samples + 1) / HOP))
        frame_step = int(np.round((SR / rate) / HOP))
        wav_slices, mel_slices = [], []
        steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
        for i in range(0, steps, frame_step):
            mel_slices.append(slice(i, i + PARTIAL_FRAMES))
            wav_slices.append(slice(i * HOP, (i + PARTIAL_FRAMES) * HOP))
        last = wav_slices[-1]
        coverage = (n_samples - last.start) / (last.stop - last.start)
        if coverage < min_coverage and len(mel_slices) > 1:
            mel_slices, wav_slices = mel_slices[:-1], wav_slices[:-1]
        return wav_slices, mel_slices

    def partial_mels(self, wav, rate=1.3, min_coverage=0.75):
        wav_slices, mel_slices = self.partial_slices(len(wav), rate, min_coverage)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        mel = mel_spectrogram(wav)
        return np.stack([mel[s] for s in mel_slices])

    def embed_utterance(self, wav, rate=1.3, min_coverage=0.75, return_partials=False):
        partials = self.forward(self.partial_mels(wav, rate, min_coverage))
        e = partials.mean(0)
        e = e / np.linalg.norm(e)
        return (e, partials) if return_partials else e

    def embed_batch(self, wavs, rate=1.3, min_coverage=0.75):
        """Embed many utterances at once: all partials of all streams in one LSTM batch."""
        mels = [self.partial_mels(w, rate, min_coverage) for w in wavs]
        counts = [len(m) for m in mels]
        partials = self.forward(np.concatenate(mels))
        out, k = [], 0
        for n in counts:
            e = partials[k:k + n].mean(0)
            out.append(e / np.linalg.norm(e))
            k += n
        return np.stack(out)


def embed_pcm8k(enc: GE2EEncoder, pcms: list[np.ndarray]) -> np.ndarray:
    """int16 8 kHz speech segments -> (N, 256) L2-normalised GE2E embeddings."""
    wavs = [normalize_volume(to_16k(np.asarray(p, np.float32) * INT16_SCALE)).astype(np.float32)
            for p in pcms]
    return enc.embed_batch(wavs)
