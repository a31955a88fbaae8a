"""Accuracy benchmark: EER and minDCF(0.01) of the product path on trial protocols.

Every enrol and test file goes through the engine's session path (streaming silero VAD,
speech windows, CAM++/GE2E, speech-weighted mean), every trial is the cosine of the two
session embeddings (EER/minDCF are invariant to the monotonic llr calibration). A trial
whose test (or enrol) file has no speech at all cannot be scored (the product answers
NO_DATA, also below 0.5 s of speech); such trials are counted and reported, and left out of the EER/minDCF. The
output ends with exactly two lines: `EER: x.xx %` and `minDCF: y.yyyy`.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--protocol", action="append", required=True, type=Path,
                    help="protocol directory (repeatable; pooled trials)")
    ap.add_argument("--encoder", default="campp", choices=["campp", "ge2e"])
    ap.add_argument("--runtime", default="onnx", choices=["onnx", "numpy"],
                    help="CAM++ runtime (numpy = reference port)")
    ap.add_argument("--det", type=Path, default=None,
                    help="DET curve PNG (default docs/det-<protocol>.png)")
    ap.add_argument("--model-dir", type=Path, default=None)


PLOT_MIN = 0.0005          # the DET axes' lowest rate (0.05 %)


def det_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str):
    """The DET figure, and one note per curve: each curve's EER is marked on it (a dot on the
    diagonal, its value in the legend); a protocol without a single error has no curve inside
    the axes, which the legend and a note on the plot say instead of leaving it blank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    from tools.metrics import det_curve, eer
    ticks = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    lim = norm.ppf([PLOT_MIN, 0.5])
    fig, ax = plt.subplots(figsize=(5, 5))
    notes = []
    for label, scores, labels in curves:
        fpr, fnr = det_curve(scores, labels)
        e = eer(scores, labels)
        errors = int(((fpr > 0) & (fnr > 0)).any())
        if not errors:
            notes.append(f"{label}: no errors to draw (targets and non-targets fully separated, EER 0.00 %)")
            ax.plot([], [], " ", label=f"{label}: no errors (EER 0.00 %)")
            continue
        line, = ax.plot(norm.ppf(np.clip(fpr, 1e-4, 1 - 1e-4)), norm.ppf(np.clip(fnr, 1e-4, 1 - 1e-4)),
                        label=f"{label} (EER {100 * e:.2f} %)")
        at = norm.ppf(max(e, PLOT_MIN))
        ax.plot([at], [at], "o", color=line.get_color(), ms=6, mec="black", mew=0.6, gid="eer")
        if e < PLOT_MIN:
            notes.append(f"{label}: EER {100 * e:.3f} % is below the plotted range (marked at its corner)")
        else:
            notes.append(f"{label}: EER {100 * e:.2f} % marked")
    ax.plot(lim, lim, "k:", lw=0.8, label="FAR = FRR: the EER lies here")
    if notes and all("no errors" in n for n in notes):
        ax.text(0.5, 0.55, "no errors to draw:\nevery target trial outscored\nevery non-target trial",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3",
                bbox={"facecolor": "white", "edgecolor": "0.8"})
    ax.set_xticks(norm.ppf(ticks))
    ax.set_xticklabels([f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks))
    ax.set_yticklabels([f"{100 * t:g}" for t in ticks])
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false accept rate (%)")
    ax.set_ylabel("false reject rate (%)")
    ax.set_title(title)
    ax.grid(True, lw=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig, notes


def plot_det(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> list[str]:
    """Write the DET figure to `path`; returns its notes (see det_figure)."""
    import matplotlib.pyplot as plt
    fig, notes = det_figure(curves, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return notes


def main(args: argparse.Namespace) -> int:
    from engine import Engine, EngineConfig
    from tools.metrics import eer, min_dcf
    from tools.protocol import Protocol, score_protocol

    kw = {"encoder": args.encoder, "runtime": args.runtime}
    if args.model_dir:
        kw["model_dir"] = args.model_dir
    engine = Engine.load(EngineConfig(**kw))
    print(f"engine: {engine.info.model} {engine.info.extractor_version} "
          f"calibration {engine.info.plda_version}", flush=True)
    cos, lab, curves, names = [], [], [], []
    t0 = time.monotonic()
    for d in args.protocol:
        proto = Protocol.read(d)
        t = time.monotonic()
        s = score_protocol(engine, proto)
        keep = s.cosine > -1.0 + 1e-9
        c, y = s.cosine[keep], s.labels[keep]
        print(f"{proto.name}: {len(s.labels)} trials ({int(s.labels.sum())} target), "
              f"{s.missing} not scored (< 0.5 s speech), EER {100 * eer(c, y):.2f} %, "
              f"minDCF {min_dcf(c, y):.4f}; counting not-scored trials as rejections: "
              f"EER {100 * eer(s.cosine, s.labels):.2f} % ({time.monotonic() - t:.1f} s)",
              flush=True)
        cos.append(c)
        lab.append(y)
        names.append(proto.name)
        curves.append((proto.name, c, y))
    c, y = np.concatenate(cos), np.concatenate(lab)
    name = "+".join(names)
    det = args.det or Path("docs") / f"det-{name}.png"
    notes = plot_det(curves, det, f"{engine.info.model} ({args.encoder}) — {name}")
    print(f"DET curve: {det} ({'; '.join(notes)}); {time.monotonic() - t0:.1f} s")
    print(f"EER: {100 * eer(c, y):.2f} %")
    print(f"minDCF: {min_dcf(c, y, p_target=0.01):.4f}")
    return 0
