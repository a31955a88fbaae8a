"""Score calibration: cosine -> llr = a * cosine + b, and llr thresholds for error targets.

The parameters come from `engine/data/calibration-<encoder>.json`, written by
`python -m tools.calibrate`. Besides (a, b) the file stores the tails of the target and
non-target llr distributions measured on the dev protocols, so a target false-accept rate
(FAR) or false-reject rate (FRR) can be turned into an llr threshold (see docs/scoring.md).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .types import BandTargets

DATA_DIR = Path(__file__).resolve().parent / "data"

# Error-rate grid at which the llr quantiles are stored (both tails).
P_GRID = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05,
          0.1, 0.2, 0.3, 0.5]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _weighted_quantile(v_sorted: np.ndarray, cum: np.ndarray, q: float) -> float:
    """Quantile q of sorted values with cumulative weights `cum` (midpoint rule: with unit
    weights, value k sits at (k + 0.5) / n)."""
    return float(np.interp(q, cum, v_sorted))


def tail_quantiles(values: np.ndarray, upper: bool, min_count: int = 5,
                   weights: np.ndarray | None = None, presorted: bool = False) -> list[list[float]]:
    """[[p, threshold]] on P_GRID. upper=True: P(v >= thr) = p (non-targets, FAR);
    upper=False: P(v <= thr) = p (targets, FRR). `weights` (e.g. a speaker-bootstrap
    replicate's trial counts) weight the trials; zero-weight trials are ignored.

    Empirical quantiles where at least `min_count` (weighted) trials lie beyond the
    threshold. Further out, the tail is extrapolated linearly in the probit domain
    (threshold against the normal deviate of p), with the slope fitted on the empirical
    tail between the last reliable point and p = 0.1, so the table stays continuous and
    monotonic."""
    from scipy.stats import norm
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if not presorted:
        order = np.argsort(v, kind="stable")
        v, w = v[order], w[order]
    keep = w > 0
    v, w = v[keep], w[keep]
    n = float(w.sum())
    sign = 1.0 if upper else -1.0
    if n <= 0:
        return [[p, 0.0] for p in P_GRID]
    cum = (np.cumsum(w) - 0.5 * w) / n
    p_min = min_count / n

    def emp(p):
        return _weighted_quantile(v, cum, 1 - p if upper else p)
    fit_p = [p for p in np.geomspace(max(p_min, 1e-6), 0.1, 12) if p >= p_min]
    if len(fit_p) >= 3:
        z = norm.isf(fit_p)
        q = np.array([emp(p) for p in fit_p])
        slope = float(np.polyfit(z, q, 1)[0])
        slope = sign * max(sign * slope, 1e-3)     # thresholds move outwards with z
    else:
        mean = float(np.average(v, weights=w))
        sd = float(np.sqrt(np.average((v - mean) ** 2, weights=w))) if len(v) > 1 else 1.0
        slope = sign * max(sd, 1e-3)
    q0, z0 = emp(p_min), norm.isf(p_min)
    out = []
    for p in P_GRID:
        q = emp(p) if p >= p_min else q0 + slope * (norm.isf(p) - z0)
        out.append(q)
    out = list(np.minimum.accumulate(out)) if upper else list(np.maximum.accumulate(out))
    return [[p, float(q)] for p, q in zip(P_GRID, out)]


def speaker_bootstrap(spk_a: np.ndarray, spk_b: np.ndarray, n_boot: int,
                      rng: np.random.Generator):
    """Yields `n_boot` trial-weight vectors, one per speaker-bootstrap replicate: the
    speakers are drawn with replacement and a trial counts count(a) * count(b) times
    (count(a) when a == b, a target trial). Trials of one speaker pair are not
    independent; resampling speakers, not trials, is what makes the spread of a
    threshold say how it moves on other speakers."""
    names, inv = np.unique(np.concatenate([np.asarray(spk_a, dtype=str),
                                           np.asarray(spk_b, dtype=str)]), return_inverse=True)
    ia, ib = inv[: len(spk_a)], inv[len(spk_a):]
    k = len(names)
    same = ia == ib
    for _ in range(n_boot):
        c = rng.multinomial(k, np.full(k, 1.0 / k)).astype(np.float64)
        yield np.where(same, c[ia], c[ia] * c[ib])


def conservative_tail(values: np.ndarray, upper: bool, spk_a: np.ndarray, spk_b: np.ndarray,
                      conf: float = 0.975, n_boot: int = 200, seed: int = 0) -> list[list[float]]:
    """tail_quantiles with a one-sided `conf` bound over speakers: per error rate, the
    `conf` quantile (upper tail; 1 - conf for the lower tail) of the threshold over
    `n_boot` speaker-bootstrap replicates (speaker_bootstrap). conf <= 0.5 gives the plain
    table.

    With a dozen speakers this is an approximate bound: on synthetic populations whose
    impostor scores are dominated by speaker effects it covers less than `conf` (tests),
    which is why the shipped tables also take the strictest condition and are checked by
    leave-one-speaker-out cross-validation on real speech. Also tried (docs/scoring.md):
    a delete-one-speaker jackknife and a Gaussian variance-components bound; both put
    TRUE_HIGH so high (cosine 0.82 and 0.89) that most genuine callers missed it."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    v = v[order]
    a, b = np.asarray(spk_a, dtype=str)[order], np.asarray(spk_b, dtype=str)[order]
    q = np.array([t for _, t in tail_quantiles(v, upper, presorted=True)])
    if conf > 0.5:
        rng = np.random.default_rng(seed)
        reps = [[t for _, t in tail_quantiles(v, upper, weights=w, presorted=True)]
                for w in speaker_bootstrap(a, b, n_boot, rng) if (w > 0).sum() >= 10]
        if reps:
            q = np.quantile(np.array(reps), conf if upper else 1 - conf, axis=0)
    q = np.minimum.accumulate(q) if upper else np.maximum.accumulate(q)
    return [[p, float(t)] for p, t in zip(P_GRID, q)]


def envelope(tables: list[list[list[float]]], upper: bool) -> list[list[float]]:
    """The strictest of several tables at each error rate: the highest FAR threshold
    (upper) or the lowest FRR threshold, so a target holds in every condition."""
    q = np.array([[t for _, t in tab] for tab in tables])
    q = q.max(axis=0) if upper else q.min(axis=0)
    return [[p, float(t)] for p, t in zip(P_GRID, q)]


def _interp_tail(table: list[list[float]], p: float) -> float:
    ps = np.log(np.array([t[0] for t in table]))
    qs = np.array([t[1] for t in table])
    lp = math.log(min(max(p, table[0][0]), table[-1][0]))
    return float(np.interp(lp, ps, qs))


@dataclass
class Calibration:
    id: str
    encoder: str
    a: float
    b: float
    far_table: list       # [[far, llr threshold]] from non-target llrs
    frr_table: list       # [[frr, llr threshold]] from target llrs
    extra: dict

    @classmethod
    def load(cls, encoder: str, path: Path | None = None) -> "Calibration":
        path = path or DATA_DIR / f"calibration-{encoder}.json"
        if not path.exists():
            # Uncalibrated fallback: a neutral mapping centred on cosine 0.5 so the
            # engine still runs; ModelInfo.plda_version says "uncalibrated".
            far = [[p, 10.0 * (0.6 - 0.3 * math.log10(p) / 5) - 5] for p in P_GRID]
            frr = [[p, 10.0 * (0.4 + 0.3 * math.log10(p) / 5) - 5] for p in P_GRID]
            return cls("uncalibrated", encoder, 10.0, -5.0, far, frr, {})
        d = json.loads(path.read_text())
        return cls(d["id"], d["encoder"], float(d["a"]), float(d["b"]), d["far_table"],
                   d["frr_table"], {k: v for k, v in d.items() if k not in
                                    ("id", "encoder", "a", "b", "far_table", "frr_table")})

    def llr(self, cosine: float | np.ndarray):
        return self.a * cosine + self.b

    def thr_far(self, far: float) -> float:
        """llr threshold above which only `far` of non-target trials score."""
        return _interp_tail(self.far_table, far)

    def thr_frr(self, frr: float) -> float:
        """llr threshold below which only `frr` of target trials score."""
        return _interp_tail(self.frr_table, frr)

    def thresholds(self, t: BandTargets) -> dict[str, float]:
        """Monotonic llr thresholds for the six bands (see docs/scoring.md).

        true_high >= true_medium >= true_low >= false_low >= false_medium >= false_high;
        a FALSE threshold is capped at true_low so the bands never overlap."""
        th = self.thr_far(t.far_high)
        tm = min(self.thr_far(t.far_medium), th)
        tl = min(self.thr_far(t.far_low), tm)
        fl = min(self.thr_frr(t.frr_low), tl)
        fm = min(self.thr_frr(t.frr_medium), fl)
        fh = min(self.thr_frr(t.frr_high), fm)
        return {"TRUE_HIGH": th, "TRUE_MEDIUM": tm, "TRUE_LOW": tl,
                "FALSE_LOW": fl, "FALSE_MEDIUM": fm, "FALSE_HIGH": fh}

    def classify(self, llr: float, t: BandTargets) -> str:
        th = self.thresholds(t)
        if llr >= th["TRUE_HIGH"]:
            return "TRUE_HIGH"
        if llr >= th["TRUE_MEDIUM"]:
            return "TRUE_MEDIUM"
        if llr >= th["TRUE_LOW"]:
            return "TRUE_LOW"
        if llr <= th["FALSE_HIGH"]:
            return "FALSE_HIGH"
        if llr <= th["FALSE_MEDIUM"]:
            return "FALSE_MEDIUM"
        return "FALSE_LOW"


def fit_linear(cos: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
               iters: int = 100) -> tuple[float, float]:
    """Weighted logistic regression llr = a*cos + b at an effective prior of 0.5 (targets
    and non-targets weighted to equal total mass), by Newton's method."""
    x = np.asarray(cos, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.where(y > 0, w / w[y > 0].sum(), w / w[y == 0].sum())
    X = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.array([10.0, -5.0])
    for _ in range(iters):
        z = X @ theta
        p = 1.0 / (1.0 + np.exp(-z))
        g = X.T @ (w * (p - y)) + 1e-6 * theta
        H = (X * (w * p * (1 - p))[:, None]).T @ X + 1e-6 * np.eye(2)
        step = np.linalg.solve(H, g)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])
