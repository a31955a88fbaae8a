"""Train the synthetic-speech (TTS) detector and evaluate it leaving one TTS engine out.

    .venv/bin/python -m tools.train_tts --speech DIR              # synthesise (cached), train, evaluate, write weights
    .venv/bin/python -m tools.train_tts --speech DIR --no-write   # evaluate only

Real speech: DIR/fsdd/*.wav (the Free Spoken Digit Dataset, CC BY-SA 4.0,
github.com/Jakobovski/free-spoken-digit-dataset: all 3,000+ recordings, 8 kHz) and
DIR/librispeech-test-other/SPEAKER/*.flac (LibriSpeech test-other, CC BY 4.0, openslr.org/12:
10 readers x 10 utterances, 16 kHz); the repository does not ship them. Synthetic speech:
synthesised here by the TTS engines Debian packages (root: `apt-get install espeak-ng espeak
mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 flite festival festvox-kallpc16k
festvox-kdlpc16k festvox-us-slt-hts libttspico-utils`; mbrola-* and libttspico-utils are in
Debian's contrib / non-free), with varied voices, rates, pitches and texts. Every utterance,
real or synthetic, goes through the same randomised channel (level, tilt/high-pass EQ, noise
or none) and the telephony path (8 kHz, G.711 mu-law encode/decode), then is cut into 2-5 s
crops. Seeded: the same packages give the same corpus and the same weights.

Evaluation: real speakers are split once (held-out speakers never train); for each engine E,
a model trained on the other engines is tested on E's crops against the held-out real crops
(EER). The shipped model is trained on every engine and every real speaker; its threshold is
the score that 1 % of held-out real crops exceeded in the leave-one-out runs (pooled)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, lfilter, resample_poly

from tools.metrics import eer
from engine.fraud.features import DIM, lfcc_vector
from engine.fraud.tts import DEFAULT_PATH, mlp_logit

REPO = Path(__file__).resolve().parents[1]
SEED = 20261124
DATA_VERSION = 2

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
            out.append(str(rng.choice(_SENTENCES)))
        elif k == 2:    # word salad: varied phonetic content
            out.append(" ".join(rng.choice(_WORDS, rng.integers(8, 16))).capitalize() + ".")
        else:
            num = "".join(str(d) for d in rng.integers(0, 10, rng.integers(4, 9)))
            out.append(f"{rng.choice(_SENTENCES)} My number is {' '.join(num)}.")
    return out


# ----------------------------------------------------------------------------- engines
def _espeak(binary: str, voices: list[str], variants: list[str]):
    def cmd(text, out, rng):
        v = str(rng.choice(voices)) + ("+" + str(rng.choice(variants)) if variants else "")
        return [binary, "-v", v, "-s", str(int(rng.integers(120, 200))), "-p", str(int(rng.integers(25, 75))),
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


ENGINES = {
    # family name -> (command builder, binary that must exist)
    "espeak": (_espeak("espeak-ng", ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"],
                       ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
                        "klatt2", "croak"]), "espeak-ng"),
    "mbrola": (_espeak("espeak-ng", ["mb-us1", "mb-us2", "mb-us3", "mb-en1"], []), "mbrola"),
    "flite": (_flite, "flite"),
    "festival-diphone": (_festival(["kal_diphone", "ked_diphone"]), "text2wave"),
    "festival-hts": (_festival(["cmu_us_slt_arctic_hts"]), "text2wave"),
    "pico": (_pico, "pico2wave"),
}


def synthesise(cache: Path, per_engine: int, jobs: int = 2) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for name, (builder, binary) in ENGINES.items():
        if shutil.which(binary) is None:
            print(f"  {name}: {binary} not installed, skipped", file=sys.stderr)
            continue
        rng = np.random.default_rng([SEED, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])
        texts = make_texts(rng, per_engine)
        folder = cache / name
        folder.mkdir(parents=True, exist_ok=True)
        todo, paths = [], []
        for i, text in enumerate(texts):
            p = folder / f"{i:04d}.wav"
            c = builder(text, p, rng)
            paths.append(p)
            if not p.exists() or p.stat().st_size < 1000:
                todo.append(c)

        def run(c):
            subprocess.run(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
        t0 = time.time()
        with ThreadPoolExecutor(jobs) as ex:
            list(ex.map(run, todo))
        ok = [p for p in paths if p.exists() and p.stat().st_size >= 1000]
        print(f"  {name}: {len(ok)} utterances ({len(todo)} synthesised in {time.time() - t0:.0f} s)", file=sys.stderr)
        out[name] = ok
    return out


# ----------------------------------------------------------------------------- channel
def ulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    """float [-1, 1) -> G.711 mu-law -> float (Sun g711.c, as audioop)."""
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


def channel(x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Random level, EQ and noise, then 8 kHz G.711 mu-law. Returns int16 at 8 kHz."""
    x = np.asarray(x, np.float64)
    x = x - x.mean()
    if rng.random() < 0.5:                                   # speed perturbation (pitch and tempo)
        f = int(round(rng.uniform(0.88, 1.12) * 50))
        x = resample_poly(x, 50, f)
    if rng.random() < 0.5:                                   # spectral tilt
        a = rng.uniform(-0.6, 0.6)
        x = lfilter([1.0, -a], [1.0], x)
    if rng.random() < 0.5:                                   # telephone-ish high-pass
        b, a2 = butter(2, rng.uniform(100, 300) / (sr / 2), "high")
        x = lfilter(b, a2, x)
    from math import gcd
    g = gcd(sr, 8000)
    x = resample_poly(x, 8000 // g, sr // g) if sr != 8000 else x
    rms = np.sqrt(np.mean(x * x)) + 1e-9
    x = x * (10 ** (rng.uniform(-32, -20) / 20) / rms)
    if rng.random() < 0.6:                                   # noise at 15-40 dB SNR
        noise = rng.standard_normal(len(x))
        if rng.random() < 0.5:
            noise = lfilter([1.0], [1.0, -0.9], noise)       # reddish
        snr = rng.uniform(15, 40)
        noise *= np.sqrt(np.mean(x * x)) / (np.sqrt(np.mean(noise * noise)) + 1e-12) / 10 ** (snr / 20)
        x = x + noise
    y = ulaw_roundtrip(np.clip(x, -1, 1))
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def crops(x: np.ndarray, rng: np.random.Generator, max_n: int) -> list[np.ndarray]:
    """Up to max_n non-overlapping 2-5 s crops (the whole signal if shorter than 2 s but >= 1.2 s)."""
    out, pos = [], 0
    while len(out) < max_n:
        n = int(rng.uniform(2.0, 5.0) * 8000)
        if pos + n > len(x):
            if not out and len(x) >= 9600:
                out.append(x)
            break
        out.append(x[pos:pos + n])
        pos += n
    return out


# ----------------------------------------------------------------------------- data
def load_real(rng: np.random.Generator, speech: Path) -> list[tuple[str, np.ndarray]]:
    """(speaker, int16 8 kHz crop) for real speech under `speech`, through the same channel."""
    items = []
    fsdd = speech / "fsdd"
    by_spk: dict[str, list[Path]] = {}
    for p in sorted(fsdd.glob("*.wav")):
        by_spk.setdefault(p.stem.split("_")[1], []).append(p)
    for spk, files in sorted(by_spk.items()):
        order = rng.permutation(len(files))
        for k in range(0, len(order) - 8, 9):                # ~55 utterances of 9 digits per speaker
            parts = []
            for j in order[k:k + 9]:
                y, sr = sf.read(files[j], dtype="float32")
                parts.append(y if y.ndim == 1 else y.mean(1))
                parts.append(np.zeros(int(rng.uniform(0.05, 0.3) * sr), np.float32))
            x = channel(np.concatenate(parts), sr, rng)
            items += [(f"fsdd-{spk}", c) for c in crops(x, rng, 2)]
    libri = speech / "librispeech-test-other"
    for p in sorted(libri.glob("*/*.flac")):
        y, sr = sf.read(p, dtype="float32")
        for rep in range(4):
            x = channel(y, sr, rng)
            items += [(f"ls-{p.parent.name}", c) for c in crops(x, rng, 4)]
    return items


def load_synth(files: dict[str, list[Path]], rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    items = []
    for name, paths in files.items():
        for p in paths:
            try:
                y, sr = sf.read(p, dtype="float32")
            except Exception:   # noqa: BLE001 - a broken synthesis output is skipped
                continue
            y = y if y.ndim == 1 else y.mean(1)
            if len(y) < sr * 1.2:
                continue
            items += [(name, c) for c in crops(channel(y, sr, rng), rng, 2)]
    return items


# ----------------------------------------------------------------------------- model
def train_mlp(x: np.ndarray, y: np.ndarray, seed: int, hidden: int = 32, epochs: int = 600,
              lr: float = 0.01, l2: float = 1e-3) -> dict:
    rng = np.random.default_rng(seed)
    mu, sigma = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sigma
    w = {"w1": rng.standard_normal((x.shape[1], hidden)) / np.sqrt(x.shape[1]), "b1": np.zeros(hidden),
         "w2": rng.standard_normal(hidden) / np.sqrt(hidden), "b2": np.zeros(())}
    # class-balanced weights: each class has half the total weight
    cw = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    for t in range(1, epochs + 1):
        h = np.tanh(z @ w["w1"] + w["b1"])
        logit = h @ w["w2"] + w["b2"]
        p = 1 / (1 + np.exp(-np.clip(logit, -40, 40)))
        g = (p - y) * cw                                    # dLoss/dlogit
        grads = {"w2": h.T @ g + l2 * w["w2"], "b2": np.asarray(g.sum())}
        gh = np.outer(g, w["w2"]) * (1 - h * h)
        grads["w1"] = z.T @ gh + l2 * w["w1"]
        grads["b1"] = gh.sum(0)
        for k in w:
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v2[k] = 0.999 * v2[k] + 0.001 * grads[k] ** 2
            w[k] = w[k] - lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v2[k] / (1 - 0.999 ** t)) + 1e-8)
    return {"mu": mu, "sigma": sigma, **w}


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Class-balanced logistic regression of y on the logit z: (a, b)."""
    from scipy.optimize import minimize
    w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))

    def loss(ab):
        t = ab[0] * z + ab[1]
        return float(np.sum(w * (np.logaddexp(0, t) - y * t)))
    r = minimize(loss, np.array([0.1, 0.0]), method="Nelder-Mead")
    return float(r.x[0]), float(r.x[1])


def prob(params: dict, x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(mlp_logit(params, x), -40, 40)))


def features(files: dict[str, list[Path]], cache: Path, per_engine: int, speech: Path):
    """(X, groups, labels) of every crop; cached next to the corpus, keyed by the code's inputs."""
    # bump DATA_VERSION when load_real / load_synth / channel / crops change
    key = hashlib.sha256(json.dumps([SEED, per_engine, sorted(files), DIM, DATA_VERSION]).encode()
                         + (REPO / "engine" / "fraud" / "features.py").read_bytes()).hexdigest()[:16]
    path = cache / f"features-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["X"], z["G"], z["Y"]
    rng = np.random.default_rng(SEED)
    print("channel + features", file=sys.stderr)
    real = load_real(rng, speech)
    synth = load_synth(files, rng)
    feats, groups, labels = [], [], []
    for lab, items in ((0, real), (1, synth)):
        for src_name, x in items:
            v = lfcc_vector(x)
            if v is None:
                continue
            feats.append(v)
            groups.append(src_name)
            labels.append(lab)
    X, G, Y = np.array(feats), np.array(groups), np.array(labels, np.float64)
    np.savez(path, X=X, G=G, Y=Y)
    return X, G, Y


FIXTURE_TEXT = "Hello, this is a test of the fraud detection system, my account number is four two seven one."


def write_fixtures(out: Path, engines: tuple[str, ...] = ("espeak", "pico", "flite")) -> list[Path]:
    """Small synthetic telephony clips for the tests (8 kHz mu-law WAV, a text not in training)."""
    import tempfile
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 99)
    written = []
    for name in engines:
        builder, binary = ENGINES[name]
        if shutil.which(binary) is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.wav"
            subprocess.run(builder(FIXTURE_TEXT, raw, rng), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
            y, sr = sf.read(raw, dtype="float32")
        x = channel(y if y.ndim == 1 else y.mean(1), sr, rng)[: 4 * 8000]
        path = out / f"tts-{name}.wav"
        sf.write(path, x, 8000, subtype="ULAW")
        written.append(path)
    return written


HELD_OUT_REAL = ("fsdd-theo", "fsdd-jason", "ls-1998", "ls-3080", "ls-533")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/vbgw/tts-corpus"),
                    help="where synthesised utterances are kept (never in the repo)")
    ap.add_argument("--speech", type=Path, help="the real-speech corpora (see the module docstring)")
    ap.add_argument("--per-engine", type=int, default=160)
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--report", help="write the evaluation as JSON here")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--fixtures", type=Path, help="only write the test clips (tests/fraud/data) and stop")
    args = ap.parse_args(argv)
    if args.fixtures:
        for p in write_fixtures(args.fixtures):
            print(p)
        return 0
    if args.speech is None or not (args.speech / "fsdd").is_dir():
        ap.error("--speech DIR is required: DIR/fsdd and DIR/librispeech-test-other (see --help)")
    t0 = time.time()
    print("synthesising", file=sys.stderr)
    files = synthesise(Path(args.cache), args.per_engine)
    if len(files) < 2:
        print("need at least two TTS engines installed (see the module docstring)", file=sys.stderr)
        return 2
    X, G, Y = features(files, Path(args.cache), args.per_engine, args.speech)
    assert X.shape[1] == DIM
    real_test = np.isin(G, HELD_OUT_REAL)
    is_real = Y == 0
    print(f"{int(is_real.sum())} real crops ({int(real_test.sum())} held-out speakers), "
          f"{int((~is_real).sum())} synthetic crops", file=sys.stderr)
    report: dict = {"seed": SEED, "engines": {}, "real_crops": int(is_real.sum()),
                    "real_heldout_crops": int(real_test.sum())}
    pooled_real, pooled_pos = [], []
    per_engine_scores = {}
    for name in files:
        tr = (is_real & ~real_test) | (~is_real & (G != name))
        te_pos = G == name
        params = train_mlp(X[tr], Y[tr], SEED)
        s_pos, s_neg = mlp_logit(params, X[te_pos]), mlp_logit(params, X[real_test])
        pooled_real.append(s_neg)
        pooled_pos.append(s_pos)
        per_engine_scores[name] = s_pos
        e = eer(np.concatenate([s_pos, s_neg]), np.concatenate([np.ones(len(s_pos)), np.zeros(len(s_neg))]))
        report["engines"][name] = {"crops": int(te_pos.sum()), "eer": round(e, 4)}
        print(f"  held out {name:17s} crops {int(te_pos.sum()):4d}  EER {100 * e:5.1f} %", file=sys.stderr)
    # Platt scaling on the out-of-domain (held-out engine, held-out speaker) logits: the
    # detectionScore is then a probability that reflects unseen engines, not the training fit.
    neg, pos = np.concatenate(pooled_real), np.concatenate(pooled_pos)
    platt = fit_platt(np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))])
    report["platt"] = [round(platt[0], 5), round(platt[1], 5)]
    cal = lambda z: 1 / (1 + np.exp(-np.clip(platt[0] * z + platt[1], -40, 40)))  # noqa: E731
    pooled = cal(neg)
    per_engine_scores = {k: cal(v) for k, v in per_engine_scores.items()}
    thr = float(np.quantile(pooled, 0.99))
    report["threshold"] = round(thr, 4)
    report["real_false_alarm_at_threshold"] = round(float((pooled >= thr).mean()), 4)
    for name, s in per_engine_scores.items():
        report["engines"][name]["detected_at_threshold"] = round(float((s >= thr).mean()), 4)
    # in-domain: every engine in training, held-out real speakers and a held-out 30 % of synthetic crops
    split = np.random.default_rng(SEED + 1).random(len(Y)) < 0.3
    tr = (is_real & ~real_test) | (~is_real & ~split)
    params = train_mlp(X[tr], Y[tr], SEED)
    te = real_test | (~is_real & split)
    report["in_domain_eer"] = round(eer(prob(params, X[te]), Y[te]), 4)
    print(f"  in-domain (all engines seen) EER {100 * report['in_domain_eer']:.1f} %; threshold {thr:.3f} "
          f"(1 % of held-out real crops above)", file=sys.stderr)
    final = train_mlp(X, Y, SEED)
    report["train_seconds"] = round(time.time() - t0, 1)
    meta = {"id": "tts-lfcc-mlp-" + time.strftime("%Y-%m-%d"), "features": "lfcc20+delta mean/std + 4 shape stats",
            "engines": sorted(files), "report": report}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    if not args.no_write:
        np.savez_compressed(args.out, threshold=np.float64(thr), meta=np.array(json.dumps(meta)),
                            platt=np.asarray(platt, np.float64),
                            **{k: np.asarray(v, np.float32) for k, v in final.items()})
        print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
