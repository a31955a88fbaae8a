"""Fit the score calibration llr = a * cosine + b on dev protocols (product path).

    python -m engine.calibrate --protocol $PROTOCOLS/fsdd-tel \
        --protocol $PROTOCOLS/ls-other-tel ... [--encoder campp]

($PROTOCOLS: trial protocols in the format of tests/data/README.md; docs/benchmarks.md, "Data".)

Every enrol and test file goes through the same session path as live audio (streaming
VAD, windows, encoder, speech-weighted mean). Each protocol gets equal weight, targets and
non-targets equal mass (prior 0.5). The result, with the tails of the target and
non-target llr distributions (for BandTargets -> llr thresholds), is written to
engine/data/calibration-<encoder>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from .calibration import DATA_DIR, fit_linear, tail_quantiles
from .metrics import eer, min_dcf


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--protocol", action="append", required=True, type=Path,
                    help="protocol directory (repeatable)")
    ap.add_argument("--encoder", default="campp", choices=["campp", "ge2e"])
    ap.add_argument("--out", type=Path, default=None,
                    help="output JSON (default engine/data/calibration-<encoder>.json)")
    ap.add_argument("--model-dir", type=Path, default=None)


def main(args: argparse.Namespace) -> int:
    from . import Engine, EngineConfig
    from .protocol import Protocol, score_protocol

    kw = {"encoder": args.encoder}
    if args.model_dir:
        kw["model_dir"] = args.model_dir
    engine = Engine.load(EngineConfig(**kw))
    cos, lab, wts, per = [], [], [], {}
    for d in args.protocol:
        proto = Protocol.read(d)
        s = score_protocol(engine, proto)
        keep = s.cosine > -1.0 + 1e-9
        c, y = s.cosine[keep], s.labels[keep]
        per[proto.name] = {"trials": int(len(s.labels)), "not_scored": int(s.missing),
                           "eer_pct": round(100 * eer(c, y), 3),
                           "min_dcf_0.01": round(min_dcf(c, y), 4)}
        print(f"{proto.name}: {per[proto.name]}", flush=True)
        cos.append(c)
        lab.append(y)
        # equal total weight per protocol, split equally between targets and non-targets
        w = np.where(y > 0, 0.5 / max((y > 0).sum(), 1), 0.5 / max((y == 0).sum(), 1))
        wts.append(w)
    c, y, w = np.concatenate(cos), np.concatenate(lab), np.concatenate(wts)
    a, b = fit_linear(c, y, w)
    llr = a * c + b
    today = dt.date.today().isoformat()
    names = "+".join(sorted(per))
    out = {
        "id": f"cal-{today}-{args.encoder}",
        "encoder": args.encoder,
        "a": a, "b": b,
        "fitted_on": per,
        "protocols": names,
        "n_target": int((y > 0).sum()), "n_nontarget": int((y == 0).sum()),
        "far_table": tail_quantiles(llr[y == 0], upper=True),
        "frr_table": tail_quantiles(llr[y > 0], upper=False),
        "llr_target_mean": float(llr[y > 0].mean()), "llr_nontarget_mean": float(llr[y == 0].mean()),
        "pooled_eer_pct": round(100 * eer(c, y), 3),
        "note": "llr = a*cosine + b (natural log); tables: [[error rate, llr threshold]], "
                "empirical where >= 5 trials lie beyond the threshold, Gaussian tail otherwise",
    }
    path = args.out or DATA_DIR / f"calibration-{args.encoder}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"a={a:.4f} b={b:.4f} -> {path}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m engine.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
