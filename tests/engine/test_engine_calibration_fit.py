"""The calibration fit and its leave-speakers-out check, on synthetic scores.

Synthetic population: a speaker pair's impostor cosines share an offset (speaker effects
plus a pair effect), so trials of one pair are not independent, as with real voices. A
band threshold fitted on a dozen speakers must then hold on speakers it never saw; the
population FAR at a threshold is known in closed form, so "holds" is exact here.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from tools.calibrate import TrialSet, calibration_of, cross_validate, fit, summarise
from engine.calibration import (Calibration, conservative_tail, envelope, speaker_bootstrap,
                                tail_quantiles)
from engine.types import BandTargets

MU_NON, SD_SPK, SD_PAIR, SD_W = 0.10, 0.03, 0.04, 0.06     # impostor cosine model
MU_TAR, SD_TAR_SPK, SD_TAR_W = 0.70, 0.05, 0.06            # genuine cosine model
SD_NON = float(np.sqrt(2 * SD_SPK ** 2 + SD_PAIR ** 2 + SD_W ** 2))


def population_far(cal: Calibration, llr_threshold: float) -> float:
    """FAR of a threshold over the whole (infinite) synthetic speaker population."""
    c = (llr_threshold - cal.b) / cal.a
    return float(norm.sf((c - MU_NON) / SD_NON))


def dev_set(rng, n_spk=12, per_pair=30, per_spk=60, name="synthetic", prefix="s") -> TrialSet:
    spk = [f"{prefix}{i}" for i in range(n_spk)]
    s_eff = rng.normal(0, SD_SPK, n_spk)
    t_eff = rng.normal(0, SD_TAR_SPK, n_spk)
    cos, lab, a, b = [], [], [], []
    for i in range(n_spk):
        for j in range(i + 1, n_spk):
            off = MU_NON + s_eff[i] + s_eff[j] + rng.normal(0, SD_PAIR)
            for ei, ej in ((i, j), (j, i)):
                cos.append(off + rng.normal(0, SD_W, per_pair))
                lab += [0] * per_pair
                a += [spk[ei]] * per_pair
                b += [spk[ej]] * per_pair
        cos.append(MU_TAR + t_eff[i] + rng.normal(0, SD_TAR_W, per_spk))
        lab += [1] * per_spk
        a += [spk[i]] * per_spk
        b += [spk[i]] * per_spk
    c = np.concatenate(cos)
    return TrialSet(name, c, np.array(lab), np.array(a), np.array(b),
                    np.full(len(c), 3000), len(c), 0)


def test_weighted_tail_matches_replicated_trials():
    rng = np.random.default_rng(3)
    v = rng.normal(size=2000)
    w = rng.integers(0, 3, size=2000).astype(float)
    a = tail_quantiles(v, True, weights=w)
    b = tail_quantiles(np.repeat(v, w.astype(int)), True)
    assert np.allclose([t for _, t in a], [t for _, t in b], atol=0.02)


def test_speaker_bootstrap_weights_are_speaker_counts():
    rng = np.random.default_rng(0)
    a = np.array(["x", "x", "y", "z"])         # trials: (x, y) impostor, then targets x, y, z
    b = np.array(["y", "x", "y", "z"])
    for w in speaker_bootstrap(a, b, 50, rng):
        cx, cy, cz = w[1], w[2], w[3]
        assert cx + cy + cz == 3               # three speakers drawn with replacement
        assert w[0] == cx * cy                 # an impostor trial counts once per drawn pair


def test_envelope_takes_the_strictest_threshold():
    t1 = [[p, 1.0] for p in (1e-3, 1e-2)]
    t2 = [[p, 2.0] for p in (1e-3, 1e-2)]
    assert [t for _, t in envelope([t1, t2], True)] == [2.0, 2.0]
    assert [t for _, t in envelope([t1, t2], False)] == [1.0, 1.0]


def test_conservative_bound_is_outside_the_plain_estimate():
    rng = np.random.default_rng(1)
    s = dev_set(rng)
    non = s.labels == 0
    plain = dict(conservative_tail(s.cosine[non], True, s.spk_enrol[non], s.spk_test[non], 0.5))
    bound = dict(conservative_tail(s.cosine[non], True, s.spk_enrol[non], s.spk_test[non], 0.95))
    assert bound[5e-4] > plain[5e-4]
    tar = s.labels > 0
    plain = dict(conservative_tail(s.cosine[tar], False, s.spk_enrol[tar], s.spk_test[tar], 0.5))
    bound = dict(conservative_tail(s.cosine[tar], False, s.spk_enrol[tar], s.spk_test[tar], 0.95))
    assert bound[5e-3] < plain[5e-3]


def _coverage(confidence: float, runs: int = 24) -> tuple[float, float]:
    targets = BandTargets()
    rng = np.random.default_rng(11)
    held, fars = 0, []
    for _ in range(runs):
        cal = calibration_of(fit([dev_set(rng)], confidence=confidence, n_boot=100, min_test_ms=0))
        th = cal.thresholds(targets)
        far_h = population_far(cal, th["TRUE_HIGH"])
        held += far_h <= targets.far_high and population_far(cal, th["TRUE_MEDIUM"]) <= targets.far_medium
        fars.append(far_h)
    return held / runs, float(np.median(fars))


def test_band_far_holds_on_unseen_speakers_more_often_than_the_plain_fit():
    """24 independent dev sets of 12 speakers each: how often do the fitted TRUE_HIGH and
    TRUE_MEDIUM thresholds keep the FAR of the whole speaker population within target?
    The plain tail (confidence 0.5: what the previous calibration amounted to) in few
    sets, its median TRUE_HIGH FAR well over 0.05 %: the check fails it. The speaker-
    bootstrap bound in most sets, with the median under target. It is not a full 95 %
    (speaker effects this strong need more than 12 speakers): docs/scoring.md."""
    plain_cov, plain_far = _coverage(0.5)
    cov, far = _coverage(0.95)
    assert plain_cov <= 0.3 and plain_far > BandTargets().far_high
    assert cov >= 0.4 and far <= BandTargets().far_high


def test_cross_validation_counts_every_held_out_trial_once_per_fold():
    rng = np.random.default_rng(5)
    s = dev_set(rng, n_spk=6, per_pair=20, per_spk=30)
    targets = BandTargets()
    held = cross_validate([s], targets, log=lambda *a, **k: None, min_test_ms=0, min_trials=10)
    rows = held[s.name]
    assert len(rows) == 6
    # a non-target trial involves two speakers: it is held out in both their folds
    n_non = sum(int((t.labels == 0).sum()) for t, _, _ in rows)
    n_tar = sum(int((t.labels > 0).sum()) for t, _, _ in rows)
    assert n_non == 2 * int((s.labels == 0).sum())
    assert n_tar == int((s.labels > 0).sum())
    summ = summarise(held, targets, n_boot=50)
    k, n, rate, lo, hi = summ["TRUE_HIGH"]["fa"]
    assert n == n_non and rate == k / n and lo <= rate <= hi + 1e-12
    # the counts are what the fold's thresholds give
    for t, counts, th in rows:
        cal_llr = counts["TRUE_LOW"]["fa"]
        assert cal_llr.shape == t.labels.shape


@pytest.mark.parametrize("encoder", ["campp", "ge2e"])
def test_shipped_calibration_was_checked_on_left_out_speakers(encoder):
    """The committed calibration carries its leave-one-speaker-out result, and every
    TRUE band held its FAR target there (the 2026-11-23 file had no such check: its
    TRUE_HIGH let 0.10 % of unseen impostors through, issue #11)."""
    cal = Calibration.load(encoder)
    cv = cal.extra.get("cv")
    assert cv, "calibration fitted without `python -m tools.calibrate --cv`"
    t = BandTargets()
    for band, target in (("TRUE_HIGH", t.far_high), ("TRUE_MEDIUM", t.far_medium),
                         ("TRUE_LOW", t.far_low)):
        errors, trials, rate = cv[band]["fa"][:3]
        assert trials >= 10_000 and rate <= target, (band, cv[band])
    assert cal.extra["method"]["confidence"] > 0.5
