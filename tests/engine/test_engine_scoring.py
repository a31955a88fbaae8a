"""Calibration, thresholds and bands."""
import math

import numpy as np
import pytest

from engine.calibration import Calibration
from engine.types import FALSE_BANDS, TRUE_BANDS, BandTargets, Embedding

ORDER = ["FALSE_HIGH", "FALSE_MEDIUM", "FALSE_LOW", "TRUE_LOW", "TRUE_MEDIUM", "TRUE_HIGH"]


@pytest.fixture(scope="module")
def cal():
    c = Calibration.load("campp")
    assert c.id != "uncalibrated", "engine/data/calibration-campp.json missing"
    return c


def test_calibration_monotonic(cal):
    assert cal.a > 0
    cos = np.linspace(-1, 1, 201)
    assert np.all(np.diff(cal.llr(cos)) > 0)
    # FAR thresholds fall as the allowed FAR grows; FRR thresholds rise with the FRR
    fars = [cal.thr_far(p) for p in (1e-5, 1e-4, 5e-4, 5e-3, 0.02, 0.1)]
    frrs = [cal.thr_frr(p) for p in (1e-5, 1e-4, 5e-3, 0.02, 0.1)]
    assert all(a >= b for a, b in zip(fars, fars[1:]))
    assert all(a <= b for a, b in zip(frrs, frrs[1:]))


@pytest.mark.parametrize("targets", [BandTargets(), BandTargets(0.001, 0.01, 0.05, 0.01, 0.05, 0.2),
                                     BandTargets(0.2, 0.3, 0.5, 0.4, 0.45, 0.5)])
def test_bands_consistent(cal, targets):
    th = cal.thresholds(targets)
    vals = [th[b] for b in reversed(ORDER)]       # TRUE_HIGH ... FALSE_HIGH
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    # each threshold maps to its own band (TRUE_*: at the threshold; FALSE_*: at it too)
    for band in TRUE_BANDS:
        assert cal.classify(th[band] + 1e-9, targets) == band or th[band] == th[
            TRUE_BANDS[TRUE_BANDS.index(band) - 1]]
    assert cal.classify(th["FALSE_HIGH"] - 1e-9, targets) == "FALSE_HIGH"
    # the band is monotonic in llr
    llrs = np.linspace(-40, 40, 2001)
    ranks = [ORDER.index(cal.classify(float(x), targets)) for x in llrs]
    assert all(a <= b for a, b in zip(ranks, ranks[1:]))
    assert set(cal.classify(float(x), targets) for x in llrs) <= set(TRUE_BANDS + FALSE_BANDS)


def test_threshold_far_means_far(cal):
    """A FAR threshold is at the stated quantile of the stored non-target tail."""
    p, q = cal.far_table[8]
    assert math.isclose(cal.thr_far(p), q, rel_tol=1e-9)


def test_score_and_merge(engine_sync):
    rng = np.random.default_rng(0)
    v = rng.standard_normal(192).astype(np.float32)
    v /= np.linalg.norm(v)
    e = Embedding(v, 4000, "campplus_cn_en_common")
    s = engine_sync.score(e, v * 3.0)
    assert math.isclose(s.cosine, 1.0, abs_tol=1e-5)
    assert s.bio_score > 0.99 and math.isclose(s.llr_norm, s.llr / 2.0, rel_tol=1e-6)
    w = rng.standard_normal(192).astype(np.float32)
    m = engine_sync.merge(w, 12000, e)
    assert m.speech_ms == 16000 and abs(np.linalg.norm(m.vector) - 1) < 1e-5
    # speech-weighted: closer to the voiceprint that holds 3x the speech
    wn = w / np.linalg.norm(w)
    assert m.vector @ wn > m.vector @ v
    th = engine_sync.thresholds(BandTargets())
    assert engine_sync.classify(th["TRUE_HIGH"] + 1, BandTargets()) == "TRUE_HIGH"
    assert engine_sync.classify(-100.0, BandTargets()) == "FALSE_HIGH"
