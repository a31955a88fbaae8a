"""TOOLING (never imported at run time): train the synthetic-speech detector and measure it
leaving one generator family out at a time.

    .venv/bin/python -m tools.train_tts --speech DIR                  # corpus (cached), LOFO, shipped weights
    .venv/bin/python -m tools.train_tts --speech DIR --no-write       # evaluate only
    .venv/bin/python -m tools.train_tts --speech DIR --families world,lpc,espeak   # a subset

DIR holds the real speech (`tools.train_tts_corpus`: DIR/fsdd, DIR/librispeech-test-other); the
repository does not ship it. The corpus: real speech and synthetic families, every
utterance through the same randomised telephony channel, cut into 3-6 s crops, each crop turned
into gated frame features by the run-time code (`engine.fraud.features`).

Protocol (speakers are never shared between roles):
* TRAIN real speakers train; CAL real speakers set every model's threshold (the score that
  THRESHOLD_FA of CAL crops exceed); TEST real speakers are never used but to report false alarms.
* Leave-one-family-out: for each family F, a model trained on TRAIN real speech and every other
  family (vocoded speech of TRAIN speakers only) is tested on all of F's crops against the TEST
  speakers' crops: EER, detection at that model's threshold, TEST false alarms.
* Platt scaling of the crop score (mean clipped frame logit) is fitted on those out-of-family
  scores and CAL scores, so `detectionScore` speaks for generators the model never saw.
* The shipped model: TRAIN real speech and every family, its threshold from CAL.

Pure numpy (no torch): the same code trains the shipped model and the tests' tiny set."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.fraud import features as _features_module
from engine.fraud.features import DIM, RunningMeanNorm, frame_features
from engine.fraud.tts import CLIP, DEFAULT_PATH, FORMAT, MIN_FRAMES, PARAM_KEYS, frame_logits
from tools.metrics import eer
from tools.train_tts_corpus import (CAL_SPEAKERS, FAMILIES, SEED, TEST_SPEAKERS, Utt, build_corpus, channel, crops,
                                    load)

DATA_VERSION = 1          # bump when the channel, crops or a generator change (features.py is hashed)
THRESHOLD_FA = 0.005      # the threshold: this share of CAL real crops score above it
FRAMES_PER_CROP = 200     # training frames drawn from each crop


# ----------------------------------------------------------------------------- features
@dataclass
class FeatureSet:
    """Every crop's gated frame features, stacked, with per-crop labels."""
    X: np.ndarray                          # (frames, DIM) float32
    start: np.ndarray                      # (crops,) first row of each crop
    count: np.ndarray                      # (crops,) rows of each crop
    family: np.ndarray                     # (crops,) "real" or a synthetic family
    speaker: np.ndarray                    # (crops,) real speaker, "" for TTS
    meta: dict = field(default_factory=dict)

    @property
    def real(self) -> np.ndarray:
        return self.family == "real"

    def role(self) -> np.ndarray:
        """TRAIN / CAL / TEST by speaker ("TRAIN" for TTS families, which have no speaker)."""
        out = np.full(len(self.family), "TRAIN", dtype=object)
        out[np.isin(self.speaker, CAL_SPEAKERS)] = "CAL"
        out[np.isin(self.speaker, TEST_SPEAKERS)] = "TEST"
        return out.astype(str)

    def rows(self, crop_idx: np.ndarray, per_crop: int | None, rng: np.random.Generator):
        """Row indices of the given crops (at most per_crop random rows each) and their crop."""
        idx, owner = [], []
        for c in crop_idx:
            r = np.arange(self.start[c], self.start[c] + self.count[c])
            if per_crop is not None and len(r) > per_crop:
                r = rng.choice(r, per_crop, replace=False)
            idx.append(r)
            owner.append(np.full(len(r), c))
        return np.concatenate(idx), np.concatenate(owner)


def featurise(real: list[Utt], fams: dict[str, list[Utt]], seed: int = SEED, reps_real: int = 3,
              reps_vocoded: int = 2, reps_tts: int = 1) -> FeatureSet:
    """Channel, crops and frame features of every utterance (seeded per family: same inputs,
    same set, whichever other families are there)."""
    parts = [_featurise_group("real", real, seed, reps_real)]
    for name, utts in fams.items():
        parts.append(_featurise_group(name, utts, seed, reps_vocoded if any(u.speaker for u in utts) else reps_tts))
    return _stack(parts)


def _featurise_group(name: str, utts: list[Utt], seed: int, reps: int) -> FeatureSet:
    rng = np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])
    X, count, fam, spk = [], [], [], []
    for u in utts:
        try:
            y, sr = load(u)
        except Exception:   # noqa: BLE001 - a broken generator output is skipped, not fatal
            continue
        if len(y) < sr:
            continue
        for _ in range(reps):
            x = channel(y, sr, rng)
            for c in crops(x, rng, 3 if u.family == "real" else 2):
                f = frame_features(c)
                if len(f) < MIN_FRAMES:
                    continue
                X.append(f.astype(np.float32))
                count.append(len(f))
                fam.append(u.family)
                spk.append(u.speaker)
    count_a = np.array(count, np.int64)
    return FeatureSet(np.concatenate(X) if X else np.zeros((0, DIM), np.float32),
                      np.concatenate([[0], np.cumsum(count_a)[:-1]]).astype(np.int64) if len(count_a) else count_a,
                      count_a, np.array(fam, dtype=str), np.array(spk, dtype=str))


def _stack(parts: list[FeatureSet]) -> FeatureSet:
    offs = np.cumsum([0] + [len(p.X) for p in parts[:-1]])
    return FeatureSet(np.concatenate([p.X for p in parts]), np.concatenate([p.start + o for p, o in zip(parts, offs)]),
                      np.concatenate([p.count for p in parts]), np.concatenate([p.family for p in parts]),
                      np.concatenate([p.speaker for p in parts]))


def cached_features(cache: Path, real: list[Utt], fams: dict[str, list[Utt]]) -> FeatureSet:
    """featurise(), cached per family next to the corpus, keyed by the code that makes them."""
    code = Path(_features_module.__file__).read_bytes()     # the channel: DATA_VERSION
    parts = []
    for name, utts, reps in [("real", real, 3)] + [(k, v, 2 if any(u.speaker for u in v) else 1)
                                                     for k, v in fams.items()]:
        key = hashlib.sha256(json.dumps([SEED, DATA_VERSION, DIM, name, len(utts), reps]).encode()
                             + code).hexdigest()[:16]
        path = cache / "features" / f"{name}-{key}.npz"
        if path.exists():
            z = np.load(path)
            parts.append(FeatureSet(z["X"], z["start"], z["count"], z["family"], z["speaker"]))
            continue
        t0 = time.time()
        fs = _featurise_group(name, utts, SEED, reps)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, X=fs.X, start=fs.start, count=fs.count, family=fs.family, speaker=fs.speaker)
        print(f"  features {name}: {len(fs.family)} crops, {len(fs.X)} frames in {time.time() - t0:.0f} s",
              file=sys.stderr)
        parts.append(fs)
    return _stack(parts)


# ----------------------------------------------------------------------------- model
def train_mlp(X: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int, hidden: tuple[int, int] = (48, 24),
              epochs: int = 10, batch: int = 2048, lr: float = 2e-3, l2: float = 1e-4,
              input_noise: float = 0.1) -> dict:
    """Frame-level weighted binary cross-entropy, Adam, minibatches, float32, seeded.
    Returns the PARAM_KEYS dict (cmn_prior left at zero: the caller sets it)."""
    rng = np.random.default_rng(seed)
    wn = w / w.sum()
    mu = (X * wn[:, None]).sum(0)
    sigma = np.sqrt((((X - mu) ** 2) * wn[:, None]).sum(0)) + 1e-4
    Z = ((X - mu) / sigma).astype(np.float32)
    y = y.astype(np.float32)
    w = (w / w.mean()).astype(np.float32)
    h1, h2 = hidden
    d = X.shape[1]
    p = {"w1": rng.standard_normal((d, h1)) / np.sqrt(d), "b1": np.zeros(h1),
         "w2": rng.standard_normal((h1, h2)) / np.sqrt(h1), "b2": np.zeros(h2),
         "w3": rng.standard_normal(h2) / np.sqrt(h2), "b3": np.zeros(())}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    t = 0
    for _ in range(epochs):
        order = rng.permutation(len(Z))
        for s in range(0, len(order), batch):
            b = order[s:s + batch]
            z, yb, wb = Z[b], y[b], w[b]
            if input_noise:
                z = z + rng.standard_normal(z.shape).astype(np.float32) * input_noise
            a1 = np.tanh(z @ p["w1"] + p["b1"])
            a2 = np.tanh(a1 @ p["w2"] + p["b2"])
            prob = 1 / (1 + np.exp(-np.clip(a2 @ p["w3"] + p["b3"], -30, 30)))
            g = (prob - yb) * wb / len(b)
            gr = {"w3": a2.T @ g + l2 * p["w3"], "b3": np.asarray(g.sum(), np.float32)}
            d2 = np.outer(g, p["w3"]) * (1 - a2 * a2)
            gr["w2"], gr["b2"] = a1.T @ d2 + l2 * p["w2"], d2.sum(0)
            d1 = (d2 @ p["w2"].T) * (1 - a1 * a1)
            gr["w1"], gr["b1"] = z.T @ d1 + l2 * p["w1"], d1.sum(0)
            t += 1
            for k in p:
                m[k] = 0.9 * m[k] + 0.1 * gr[k]
                v2[k] = 0.999 * v2[k] + 0.001 * gr[k] * gr[k]
                p[k] = p[k] - lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v2[k] / (1 - 0.999 ** t)) + 1e-8)
    return {"cmn_prior": np.zeros(d), "mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64),
            **{k: v.astype(np.float64) for k, v in p.items()}}


def training_rows(fs: FeatureSet, crop_idx: np.ndarray, rng: np.random.Generator):
    """Frames of the given crops (FRAMES_PER_CROP each at most) with labels and weights: every
    synthetic family the same total weight, every real speaker the same total weight, the real
    and synthetic halves equal, each crop's frames sharing its weight."""
    rows, owner = fs.rows(crop_idx, FRAMES_PER_CROP, rng)
    fam, spk = fs.family[owner], fs.speaker[owner]
    y = (fam != "real").astype(np.float64)
    group = np.where(y == 1, fam, spk)
    n_groups = {1.0: len(set(group[y == 1])), 0.0: len(set(group[y == 0]))}
    _, crop_inv, rows_per_crop = np.unique(owner, return_inverse=True, return_counts=True)
    crops_per_group = {g: len(np.unique(owner[group == g])) for g in set(group)}
    w = np.array([0.5 / n_groups[yy] / crops_per_group[g] for yy, g in zip(y, group)])
    w = w / rows_per_crop[crop_inv]
    return fs.X[rows], y, w


def normalised(fs: FeatureSet, prior: np.ndarray) -> FeatureSet:
    """Every crop through RunningMeanNorm (a crop is a call from its start), as TtsStream does."""
    X = np.empty_like(fs.X)
    for s, n in zip(fs.start, fs.count):
        X[s:s + n] = RunningMeanNorm(prior).apply(fs.X[s:s + n])
    return FeatureSet(X, fs.start, fs.count, fs.family, fs.speaker)


def crop_scores(params: dict, fs: FeatureSet, crop_idx: np.ndarray) -> np.ndarray:
    """Each (normalised) crop's mean clipped frame logit: what TtsStream computes over a call."""
    out = np.empty(len(crop_idx))
    for i, c in enumerate(crop_idx):
        x = fs.X[fs.start[c]:fs.start[c] + fs.count[c]].astype(np.float64)
        out[i] = np.clip(frame_logits(params, x), -CLIP, CLIP).mean()
    return out


def fit_platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Class-balanced logistic regression of y on the score z: (a, b)."""
    from scipy.optimize import minimize
    w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))

    def loss(ab):
        t = ab[0] * z + ab[1]
        return float(np.sum(w * (np.logaddexp(0, t) - y * t)))
    r = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead")
    return float(r.x[0]), float(r.x[1])


def threshold_at(cal_scores: np.ndarray, fa: float = THRESHOLD_FA) -> float:
    """The score that a share `fa` of CAL real crops exceed."""
    return float(np.quantile(cal_scores, 1 - fa))


# ----------------------------------------------------------------------------- protocol
def evaluate(fs: FeatureSet, seed: int = SEED, families: list[str] | None = None, train_kw: dict | None = None,
             log=print) -> tuple[dict, dict]:
    """Leave-one-family-out figures and the shipped model (trained on every family).
    Returns (report, shipped {params, platt, threshold})."""
    train_kw = train_kw or {}
    role = fs.role()
    real = fs.real
    rng = np.random.default_rng(seed)
    prior = fs.X[fs.rows(np.flatnonzero(real & (role == "TRAIN")), None, rng)[0]].mean(0)   # real TRAIN frames
    fs = normalised(fs, prior)
    fams = [str(f) for f in (families or sorted(set(fs.family[~real])))]
    train_real = np.flatnonzero(real & (role == "TRAIN"))
    cal, test = np.flatnonzero(real & (role == "CAL")), np.flatnonzero(real & (role == "TEST"))
    synth_train = ~real & (role == "TRAIN")          # vocoded: TRAIN speakers only; TTS: all
    report: dict = {"families": {}, "crops": {"real_train": len(train_real), "real_cal": len(cal),
                                             "real_test": len(test)}}
    pooled_pos, pooled_cal = [], []
    for f in fams:
        t0 = time.time()
        tr = np.concatenate([train_real, np.flatnonzero(synth_train & np.isin(fs.family, fams) & (fs.family != f))])
        params = train_mlp(*training_rows(fs, tr, rng), seed=seed, **train_kw)
        # positives: TTS crops, and vocoded crops of TEST speakers only (a vocoded TRAIN speaker
        # would be judged partly on a voice the model learnt as real: not the question asked)
        pos = crop_scores(params, fs, np.flatnonzero((fs.family == f) & ((fs.speaker == "") | (role == "TEST"))))
        s_cal, s_test = crop_scores(params, fs, cal), crop_scores(params, fs, test)
        thr = threshold_at(s_cal)
        e = eer(np.concatenate([pos, s_test]), np.r_[np.ones(len(pos)), np.zeros(len(s_test))])
        report["families"][f] = {"kind": FAMILIES.get(f, "?"), "crops": len(pos), "eer": round(e, 4),
                                 "detected": round(float((pos >= thr).mean()), 4),
                                 "test_false_alarms": round(float((s_test >= thr).mean()), 4)}
        pooled_pos.append(pos)
        pooled_cal.append(s_cal)
        r = report["families"][f]
        log(f"  left out {f:17s} crops {len(pos):4d}  EER {100 * e:5.1f} %  detected {100 * r['detected']:5.1f} %  "
            f"TEST false alarms {100 * r['test_false_alarms']:4.1f} %  ({time.time() - t0:.0f} s)")
    pos, neg = np.concatenate(pooled_pos), np.concatenate(pooled_cal)
    platt = fit_platt(np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))])
    tr = np.concatenate([train_real, np.flatnonzero(synth_train & np.isin(fs.family, fams))])
    params = train_mlp(*training_rows(fs, tr, rng), seed=seed, **train_kw)
    params["cmn_prior"] = prior.astype(np.float64)
    s_cal, s_test = crop_scores(params, fs, cal), crop_scores(params, fs, test)
    thr_logit = threshold_at(s_cal)
    prob = lambda s: 1 / (1 + np.exp(-np.clip(platt[0] * s + platt[1], -40, 40)))  # noqa: E731
    thr = float(prob(thr_logit))
    report["shipped"] = {"threshold": round(thr, 6), "threshold_logit": round(thr_logit, 4),
                         "platt": [round(platt[0], 5), round(platt[1], 5)],
                         "test_false_alarms": round(float((s_test >= thr_logit).mean()), 4),
                         "test_crops": len(test), "cal_crops": len(cal)}
    # in-domain, for reference only: vocoded speech of CAL/TEST speakers (never trained on)
    voc_heldout = np.flatnonzero(~real & (role != "TRAIN"))
    if len(voc_heldout):
        s_voc = crop_scores(params, fs, voc_heldout)
        report["shipped"]["heldout_speaker_vocoded_detected"] = round(float((s_voc >= thr_logit).mean()), 4)
        report["shipped"]["heldout_speaker_vocoded_eer"] = round(
            eer(np.concatenate([s_voc, s_test]), np.r_[np.ones(len(s_voc)), np.zeros(len(s_test))]), 4)
    neural = [r["eer"] for r in report["families"].values() if r["kind"] == "neural-tts"]
    report["summary"] = {"mean_eer": round(float(np.mean([r["eer"] for r in report["families"].values()])), 4),
                         "max_neural_eer": round(max(neural), 4) if neural else None}
    log(f"  shipped: threshold P >= {thr:.4f} (logit {thr_logit:.3f}); TEST false alarms "
        f"{100 * report['shipped']['test_false_alarms']:.2f} % of {len(test)} crops")
    return report, {"params": params, "platt": platt, "threshold": thr}


def write_weights(path: Path, shipped: dict, report: dict, families: list[str]) -> None:
    meta = {"id": "tts-frame-mlp-" + time.strftime("%Y-%m-%d"), "format": FORMAT,
            "features": "per frame, minus the call's running mean: lfcc c1-19 x 3 frames, 4 band flatness, "
                        "periodicity, jitter, level change, modified group delay c0-19, cepstral peak prominence",
            "families": families, "report": report}
    np.savez_compressed(path, threshold=np.float64(shipped["threshold"]), meta=np.array(json.dumps(meta)),
                        platt=np.asarray(shipped["platt"], np.float64),
                        **{k: np.asarray(shipped["params"][k], np.float32) for k in PARAM_KEYS})


FIXTURES = ("piper-vits", "kokoro", "espeak", "pico")


def write_fixtures(out: Path, cache: Path) -> list[Path]:
    """The tests' synthetic telephony clips (tests/fraud/data): a text the corpus never uses,
    one utterance per generator, through the channel (fixed seed), 8 kHz G.711 mu-law WAV."""
    import tempfile

    import soundfile as sf

    from tools.train_tts_corpus import DEBIAN_ENGINES, FIXTURE_TEXT, _run_commands, kokoro_family, piper_family
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name in FIXTURES:
            rng = np.random.default_rng([SEED, 99, len(name)])
            raw = t / name / "0000.wav"
            raw.parent.mkdir(parents=True)
            if name in DEBIAN_ENGINES:
                _run_commands([DEBIAN_ENGINES[name][0](FIXTURE_TEXT, raw, rng)], 1)
            else:
                (piper_family if name == "piper-vits" else kokoro_family)(t, 1, texts=[FIXTURE_TEXT])
            if not raw.exists():
                print(f"  {name}: generator missing, no fixture", file=sys.stderr)
                continue
            y, sr = load(Utt(name, "", raw))
            x = channel(y, sr, rng)
            path = out / f"tts-{name}.wav"
            sf.write(path, x, 8000, subtype="ULAW")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/vbgw/tts-corpus2"),
                    help="where generated utterances and features are kept (never in the repo)")
    ap.add_argument("--speech", type=Path, help="the real-speech corpora (DIR/fsdd, DIR/librispeech-test-other)")
    ap.add_argument("--families", help="comma-separated subset of " + ",".join(FAMILIES))
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--report", type=Path, help="write the evaluation as JSON here")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--fixtures", type=Path, help="only write the tests' synthetic clips here (tests/fraud/data)")
    args = ap.parse_args(argv)
    if args.fixtures:
        for p in write_fixtures(args.fixtures, Path(args.cache)):
            print(p)
        return 0
    if args.speech is None or not (args.speech / "fsdd").is_dir():
        ap.error("--speech DIR is required: DIR/fsdd and DIR/librispeech-test-other (see --help)")
    t0 = time.time()
    cache = Path(args.cache)
    real, fams = build_corpus(cache, args.speech)
    fs = cached_features(cache, real, fams)
    families = [f for f in (args.families.split(",") if args.families else fams) if f in fams]
    print(f"{int(fs.real.sum())} real crops, {int((~fs.real).sum())} synthetic crops, {len(fs.X)} frames; "
          f"families {families}", file=sys.stderr)
    report, shipped = evaluate(fs, families=families, log=lambda s: print(s, file=sys.stderr))
    report["seconds"] = round(time.time() - t0, 1)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    if not args.no_write:
        write_weights(Path(args.out), shipped, report, families)
        print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
