"""Fit and check the score calibration on trial protocols (product path).

    python -m tools.calibrate --protocol $PROTOCOLS/fsdd-tel \\
        --protocol $PROTOCOLS/ls-other-tel ... [--encoder campp] [--cv]

($PROTOCOLS: trial protocols in the format of tests/data/README.md; docs/benchmarks.md, "Data".)

Every enrol and test file goes through the same session path as live audio (streaming
VAD, windows, encoder, speech-weighted mean). Then:

1. llr = a * cosine + b: logistic regression, each protocol equal weight, targets and
   non-targets equal mass (prior 0.5).
2. Band thresholds: per protocol (a test condition: corpus, enrolment and test length),
   the tails of the non-target llrs (FAR) and target llrs (FRR), each moved outwards to a
   one-sided `--confidence` bound over a bootstrap of the *speakers* (trials of one
   speaker pair are not independent, so the uncertainty that matters for unseen speakers
   is the speakers'); the shipped table is the strictest over the protocols (the highest FAR
   threshold, the lowest FRR threshold), so each band's target holds in every condition,
   not only on average.
   Trials whose test holds less than `--min-test-speech-ms` (the product's EARLY minimum,
   2 s) are left out of the tables: the product answers LOW_DATA for them.
3. `--cv`: leave-one-speaker-out cross-validation of 1-2: for each speaker, fit on the
   trials without that speaker, then count, on the trials with that speaker (every pair
   there is unseen), the impostors each TRUE band admits and the genuine trials each band
   rejects. Pooled over folds; 95 % intervals from a speaker bootstrap of the pooled counts.

Writes engine/data/calibration-<encoder>.json (unless --no-write); docs/scoring.md says
what the fields mean and what the cross-validation measured.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.calibration import (DATA_DIR, Calibration, conservative_tail, envelope, fit_linear,
                          speaker_bootstrap)
from tools.metrics import eer, min_dcf
from engine.types import BandTargets

TRUE_BANDS = ("TRUE_HIGH", "TRUE_MEDIUM", "TRUE_LOW")
FALSE_BANDS = ("FALSE_HIGH", "FALSE_MEDIUM")


@dataclass
class TrialSet:
    """The scored trials of one protocol (trials with a NO_DATA side left out)."""
    name: str
    cosine: np.ndarray
    labels: np.ndarray
    spk_enrol: np.ndarray
    spk_test: np.ndarray
    test_ms: np.ndarray
    trials: int = 0            # all trials of the protocol, scored or not
    not_scored: int = 0

    def subset(self, mask: np.ndarray) -> "TrialSet":
        return TrialSet(self.name, self.cosine[mask], self.labels[mask], self.spk_enrol[mask],
                        self.spk_test[mask], self.test_ms[mask], int(mask.sum()), 0)

    @classmethod
    def from_scores(cls, s) -> "TrialSet":
        keep = s.cosine > -1.0 + 1e-9
        return cls(s.protocol, s.cosine[keep], s.labels[keep], s.enrol_speaker[keep].astype(str),
                   s.test_speaker[keep].astype(str), s.speech_ms[keep], len(s.labels), int(s.missing))


def score_sets(dirs: list[Path], encoder: str = "campp", model_dir: Path | None = None,
               cache_file: Path | None = None, log=print) -> list[TrialSet]:
    """Score protocol directories through the engine (each file embedded once, even when
    protocols share audio). `cache_file` keeps the scored trials between runs."""
    if cache_file is not None and cache_file.exists():
        cached = pickle.loads(cache_file.read_bytes())
        if cached.get("dirs") == [str(d) for d in dirs] and cached.get("encoder") == encoder:
            return cached["sets"]
    from engine import Engine, EngineConfig
    from tools.protocol import Protocol, score_protocol
    kw = {"encoder": encoder}
    if model_dir:
        kw["model_dir"] = model_dir
    engine = Engine.load(EngineConfig(**kw))
    emb_cache: dict = {}
    sets = []
    for d in dirs:
        s = score_protocol(engine, Protocol.read(d), cache=emb_cache)
        sets.append(TrialSet.from_scores(s))
        log(f"{s.protocol}: {len(s.labels)} trials ({int(s.labels.sum())} target), "
            f"{s.missing} not scored", flush=True)
    if cache_file is not None:
        cache_file.write_bytes(pickle.dumps({"dirs": [str(d) for d in dirs], "encoder": encoder,
                                             "sets": sets}))
    return sets


def fit(sets: list[TrialSet], confidence: float = 0.975, n_boot: int = 200,
        min_test_ms: int = 2000, min_trials: int = 100) -> dict:
    """Calibration parameters and tables (the JSON body, without id/encoder) from `sets`."""
    cos, lab, wts = [], [], []
    for s in sets:
        y = s.labels
        cos.append(s.cosine)
        lab.append(y)
        wts.append(np.where(y > 0, 0.5 / max((y > 0).sum(), 1), 0.5 / max((y == 0).sum(), 1)))
    c, y, w = np.concatenate(cos), np.concatenate(lab), np.concatenate(wts)
    a, b = fit_linear(c, y, w)
    far_tabs, frr_tabs, conditions = [], [], {}
    for s in sets:
        m = s.test_ms >= min_test_ms
        llr = a * s.cosine[m] + b
        non, tar = (s.labels[m] == 0), (s.labels[m] > 0)
        cond = {"nontarget": int(non.sum()), "target": int(tar.sum())}
        if non.sum() >= min_trials:
            tab = conservative_tail(llr[non], True, s.spk_enrol[m][non], s.spk_test[m][non],
                                    confidence, n_boot)
            far_tabs.append(tab)
            cond["far_thresholds"] = {f"{p:g}": round(t, 3) for p, t in tab if p in (5e-4, 5e-3, 0.02)}
        if tar.sum() >= min_trials // 4:
            tab = conservative_tail(llr[tar], False, s.spk_enrol[m][tar], s.spk_test[m][tar],
                                    confidence, n_boot)
            frr_tabs.append(tab)
            cond["frr_thresholds"] = {f"{p:g}": round(t, 3) for p, t in tab if p in (5e-3, 0.02)}
        conditions[s.name] = cond
    if not far_tabs or not frr_tabs:
        raise ValueError("too few scored trials with enough test speech to fit the band tables")
    return {"a": a, "b": b, "far_table": envelope(far_tabs, True),
            "frr_table": envelope(frr_tabs, False), "conditions": conditions,
            "n_target": int((y > 0).sum()), "n_nontarget": int((y == 0).sum()),
            "method": {"bound": "speaker bootstrap", "replicates": n_boot, "confidence": confidence,
                       "min_test_speech_ms": min_test_ms, "tables": "strictest over protocols"}}


def calibration_of(params: dict, encoder: str = "campp", id: str = "cv") -> Calibration:
    return Calibration(id, encoder, params["a"], params["b"], params["far_table"],
                       params["frr_table"], {})


def band_counts(cal: Calibration, s: TrialSet, targets: BandTargets) -> dict:
    """Per trial: is it an impostor admitted by each TRUE band / a genuine trial at or
    below each FALSE band or below each TRUE band? Returns boolean arrays keyed by band."""
    th = cal.thresholds(targets)
    llr = cal.llr(s.cosine)
    out = {}
    for band in TRUE_BANDS:
        out[band] = {"fa": llr >= th[band], "fr": llr < th[band]}
    for band in FALSE_BANDS:
        out[band] = {"fr": llr <= th[band]}
    return out


def cross_validate(sets: list[TrialSet], targets: BandTargets, log=print, **fit_kw) -> dict:
    """Leave-one-speaker-out: returns, per protocol, the held-out trials' band decisions
    (pooled over folds) with their speakers, for rates and speaker-bootstrap intervals.
    Only tests with at least `min_test_ms` of speech are counted (shorter ones get
    LOW_DATA in the product, never a band)."""
    speakers = sorted(set().union(*[set(s.spk_enrol) | set(s.spk_test) for s in sets]))
    min_test = fit_kw.get("min_test_ms", 2000)     # shorter tests are LOW_DATA, never banded
    held: dict[str, list] = {s.name: [] for s in sets}
    for k, spk in enumerate(speakers):
        train = [s.subset((s.spk_enrol != spk) & (s.spk_test != spk)) for s in sets]
        train = [t for t in train if len(t.labels)]
        cal = calibration_of(fit(train, **fit_kw))
        for s in sets:
            m = ((s.spk_enrol == spk) | (s.spk_test == spk)) & (s.test_ms >= min_test)
            if m.any():
                t = s.subset(m)
                held[s.name].append((t, band_counts(cal, t, targets), cal.thresholds(targets)))
        log(f"  fold {k + 1}/{len(speakers)} (speaker {spk}): "
            f"TRUE_HIGH llr >= {cal.thresholds(targets)['TRUE_HIGH']:.2f}", flush=True)
    return held


def summarise(held: dict, targets: BandTargets, names: list[str] | None = None,
              n_boot: int = 1000, seed: int = 1) -> dict:
    """Pooled held-out rates per band over the protocols in `names` (all by default):
    {band: {"fa"|"fr": (errors, trials, rate, lo95, hi95)}}. The interval is a speaker
    bootstrap of the pooled counts (trials aggregated per speaker pair first)."""
    rows = [r for n, rs in held.items() if names is None or n in names for r in rs]
    if not rows:
        return {}
    spk_e = np.concatenate([t.spk_enrol for t, _, _ in rows])
    spk_t = np.concatenate([t.spk_test for t, _, _ in rows])
    lab = np.concatenate([t.labels for t, _, _ in rows])
    pairs, inv = np.unique(np.stack([spk_e, spk_t], 1).astype(str), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    reps = np.array(list(speaker_bootstrap(pairs[:, 0], pairs[:, 1], n_boot,
                                           np.random.default_rng(seed))))   # (n_boot, pairs)
    out = {}
    for band in TRUE_BANDS + FALSE_BANDS:
        out[band] = {}
        for kind, sel in (("fa", lab == 0), ("fr", lab > 0)):
            if kind not in rows[0][1][band]:
                continue
            err = np.concatenate([c[band][kind] for _, c, _ in rows])
            n, k = int(sel.sum()), int((err & sel).sum())
            n_pair = np.bincount(inv[sel], minlength=len(pairs)).astype(np.float64)
            k_pair = np.bincount(inv[sel & err], minlength=len(pairs)).astype(np.float64)
            rates = (reps @ k_pair) / np.maximum(reps @ n_pair, 1e-12)
            lo, hi = np.quantile(rates, [0.025, 0.975]) if n else (0.0, 0.0)
            out[band][kind] = (k, n, k / max(n, 1), float(lo), float(hi))
    return out


def format_summary(title: str, summ: dict, targets: BandTargets) -> str:
    tgt = {"TRUE_HIGH": targets.far_high, "TRUE_MEDIUM": targets.far_medium,
           "TRUE_LOW": targets.far_low, "FALSE_HIGH": targets.frr_high,
           "FALSE_MEDIUM": targets.frr_medium}
    lines = [f"{title}", "| band | target | held-out FAR (impostors admitted) | 95 % interval "
             "(speaker bootstrap) | held-out FRR | 95 % interval |", "|---|---|---|---|---|---|"]
    for band in TRUE_BANDS + FALSE_BANDS:
        r = summ.get(band, {})
        fa, fr = r.get("fa"), r.get("fr")
        far = f"{100 * fa[2]:.3f} % ({fa[0]:,} / {fa[1]:,})" if fa else "–"
        fai = f"{100 * fa[3]:.3f}–{100 * fa[4]:.3f} %" if fa else "–"
        frr = f"{100 * fr[2]:.2f} % ({fr[0]:,} / {fr[1]:,})" if fr else "–"
        fri = f"{100 * fr[3]:.2f}–{100 * fr[4]:.2f} %" if fr else "–"
        kind = "FAR" if band in TRUE_BANDS else "FRR"
        lines.append(f"| {band} | {kind} {100 * tgt[band]:g} % | {far} | {fai} | {frr} | {fri} |")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--protocol", action="append", required=True, type=Path,
                    help="protocol directory (repeatable)")
    ap.add_argument("--encoder", default="campp", choices=["campp", "ge2e"])
    ap.add_argument("--out", type=Path, default=None,
                    help="output JSON (default engine/data/calibration-<encoder>.json)")
    ap.add_argument("--no-write", action="store_true", help="fit and report, write nothing")
    ap.add_argument("--cv", action="store_true",
                    help="leave-one-speaker-out cross-validation of the fit (per-band FAR/FRR)")
    ap.add_argument("--confidence", type=float, default=0.975,
                    help="one-sided confidence of each table threshold (speaker bootstrap)")
    ap.add_argument("--boot", type=int, default=200, help="speaker-bootstrap replicates")
    ap.add_argument("--min-test-speech-ms", type=int, default=2000,
                    help="tests with less speech are left out of the band tables (LOW_DATA)")
    ap.add_argument("--scores-cache", type=Path, default=None,
                    help="pickle of the scored trials, reused when the protocol list matches")
    ap.add_argument("--model-dir", type=Path, default=None)


def main(args: argparse.Namespace) -> int:
    sets = score_sets(args.protocol, args.encoder, args.model_dir, args.scores_cache)
    fit_kw = {"confidence": args.confidence, "n_boot": args.boot,
              "min_test_ms": args.min_test_speech_ms}
    targets = BandTargets()
    params = fit(sets, **fit_kw)
    per = {s.name: {"trials": s.trials, "not_scored": s.not_scored,
                    "eer_pct": round(100 * eer(s.cosine, s.labels), 3),
                    "min_dcf_0.01": round(min_dcf(s.cosine, s.labels), 4)} for s in sets}
    for name, r in per.items():
        print(f"{name}: {r}")
    cal = calibration_of(params, args.encoder)
    th = cal.thresholds(targets)
    print("default band thresholds (llr): " + ", ".join(f"{k} {v:.2f}" for k, v in th.items()))
    out = {"id": f"cal-{dt.date.today().isoformat()}-{args.encoder}", "encoder": args.encoder,
           "a": params["a"], "b": params["b"], "fitted_on": per,
           "protocols": "+".join(sorted(per)), **{k: v for k, v in params.items() if k not in ("a", "b")},
           "pooled_eer_pct": round(100 * eer(np.concatenate([s.cosine for s in sets]),
                                             np.concatenate([s.labels for s in sets])), 3),
           "note": "llr = a*cosine + b (natural log); tables: [[error rate, llr threshold]], "
                   "the strictest over the protocols of each protocol's speaker-bootstrap "
                   "bound (empirical where >= 5 trials lie beyond the threshold, probit-linear "
                   "tail otherwise); see docs/scoring.md"}
    if args.cv:
        held = cross_validate(sets, targets, **fit_kw)
        summ = summarise(held, targets)
        print(format_summary("leave-one-speaker-out, all protocols pooled (tests with >= "
                             f"{args.min_test_speech_ms} ms of speech)", summ, targets))
        for s in sets:
            print(format_summary(f"held out: {s.name}", summarise(held, targets, [s.name]), targets))
        out["cv"] = {band: {k: list(v) for k, v in r.items()} for band, r in summ.items()}
    if not args.no_write:
        path = args.out or DATA_DIR / f"calibration-{args.encoder}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"a={params['a']:.4f} b={params['b']:.4f} -> {path}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m tools.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
