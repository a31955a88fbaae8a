"""Duration benchmark: EER and band error rates by enrolment and test speech length.

    vbgw bench duration --speech $SPEECH/librispeech-test-other \
        --speech $SPEECH/fsdd [--enrol-s 4 --enrol-s 12] \
        [--test-s 1 --test-s 2 --test-s 3 --test-s 5] [--work DIR] [--json out.json]

Builds trial protocols from raw speech with `tools.speechset` (telephony channel, cuts
holding exactly E s of enrolment speech and D s of test speech as the engine's VAD counts
it, all-vs-all trials, enrolment and test audio never overlapping), scores them through
the product path (`tools.protocol.score_protocol`) and prints, per corpus, enrolment and
test length: trials, EER, minDCF(0.01), and at the shipped calibration's default bands
the share of impostors admitted as TRUE_HIGH / TRUE_LOW or better and of genuine trials
below TRUE_HIGH / at FALSE_HIGH. The last table pools the corpora.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--speech", action="append", required=True, type=Path,
                    help="speech directory (repeatable): <speaker>/**/*.flac|wav|ogg or FSDD")
    ap.add_argument("--enrol-s", action="append", type=float, default=None,
                    help="enrolment speech seconds (repeatable; default 4 and 12)")
    ap.add_argument("--test-s", action="append", type=float, default=None,
                    help="test speech seconds (repeatable; default 1, 2, 3 and 5)")
    ap.add_argument("--splits", type=int, default=3, help="enrolment/test rotations per speaker")
    ap.add_argument("--work", type=Path, default=None,
                    help="where the protocols are built (default: a temporary directory)")
    ap.add_argument("--reuse", action="store_true",
                    help="use the protocols an earlier run left in --work instead of rebuilding")
    ap.add_argument("--scores-cache", type=Path, default=None,
                    help="pickle of the scored trials, reused when the protocol list matches")
    ap.add_argument("--encoder", default="campp", choices=["campp", "ge2e"])
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    ap.add_argument("--model-dir", type=Path, default=None)


def rows_of(sets, cal, targets) -> list[dict]:
    from tools.calibrate import band_counts
    from tools.metrics import eer, min_dcf
    rows = []
    for s in sets:
        c = band_counts(cal, s, targets)
        non, tar = s.labels == 0, s.labels > 0
        rows.append({"protocol": s.name, "trials": s.trials, "target": int(tar.sum()),
                     "not_scored": s.not_scored,
                     "eer_pct": 100 * eer(s.cosine, s.labels),
                     "min_dcf": min_dcf(s.cosine, s.labels),
                     "far_true_high_pct": 100 * c["TRUE_HIGH"]["fa"][non].mean(),
                     "far_true_low_pct": 100 * c["TRUE_LOW"]["fa"][non].mean(),
                     "frr_true_high_pct": 100 * c["TRUE_HIGH"]["fr"][tar].mean(),
                     "false_high_genuine_pct": 100 * c["FALSE_HIGH"]["fr"][tar].mean()})
    return rows


def pooled(sets, name: str):
    from tools.calibrate import TrialSet
    cat = lambda f: np.concatenate([getattr(s, f) for s in sets])   # noqa: E731
    return TrialSet(name, cat("cosine"), cat("labels"), cat("spk_enrol"), cat("spk_test"),
                    cat("test_ms"), sum(s.trials for s in sets), sum(s.not_scored for s in sets))


def table(rows: list[dict]) -> str:
    out = ["| protocol | trials (target) | EER | minDCF(0.01) | impostors ≥ TRUE_HIGH | "
           "impostors ≥ TRUE_LOW | genuine < TRUE_HIGH | genuine at FALSE_HIGH |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['protocol']} | {r['trials']:,} ({r['target']:,}) | {r['eer_pct']:.2f} % | "
                   f"{r['min_dcf']:.4f} | {r['far_true_high_pct']:.3f} % | {r['far_true_low_pct']:.2f} % | "
                   f"{r['frr_true_high_pct']:.2f} % | {r['false_high_genuine_pct']:.2f} % |")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from tools.calibrate import score_sets
    from engine.calibration import Calibration
    from tools.speechset import build, load_vad
    from engine.types import BandTargets

    enrol_s, test_s = args.enrol_s or [4, 12], args.test_s or [1, 2, 3, 5]
    work = args.work or Path(tempfile.mkdtemp(prefix="vbgw-duration-"))
    vad = load_vad(args.model_dir)
    dirs: dict[str, list[Path]] = {}
    for sp in args.speech:
        want = [work / f"{sp.name}-e{e:g}-t{d:g}" for e in enrol_s for d in test_s]
        if args.reuse and all((d / "trials.csv").exists() for d in want):
            dirs[sp.name] = want
        else:
            dirs[sp.name] = build(vad, sp, work, enrol_s, test_s, splits=args.splits)
    sets = score_sets([d for ds in dirs.values() for d in ds], args.encoder, args.model_dir,
                      args.scores_cache)
    by_name = {s.name: s for s in sets}
    cal = Calibration.load(args.encoder)
    targets = BandTargets()
    print(f"calibration {cal.id}; default bands: "
          + ", ".join(f"{k} llr {v:.2f}" for k, v in cal.thresholds(targets).items()))
    rows = []
    for corpus, ds in dirs.items():
        r = rows_of([by_name[d.name] for d in ds], cal, targets)
        rows += r
        print(f"\n{corpus}\n{table(r)}")
    pooled_sets = [pooled([by_name[ds[i].name] for ds in dirs.values()],
                          f"pooled-e{e:g}-t{d:g}")
                   for i, (e, d) in enumerate((e, d) for e in enrol_s for d in test_s)]
    r = rows_of(pooled_sets, cal, targets)
    rows += r
    print(f"\npooled over {', '.join(dirs)}\n{table(r)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0
