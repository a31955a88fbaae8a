"""DET plots of `vbgw bench accuracy` mark each curve's EER, and say so when a protocol has no
errors to draw (issue #10, section 5)."""
from __future__ import annotations

import numpy as np

from tools.bench.accuracy import det_figure
from tools.metrics import eer
from support import PROTOCOLS


def _eer_markers(fig):
    return [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "eer"]


def test_eer_is_marked_on_the_curve_and_in_the_legend():
    from scipy.stats import norm
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(2, 1, 400), rng.normal(0, 1, 4000)])
    labels = np.concatenate([np.ones(400, int), np.zeros(4000, int)])
    fig, notes = det_figure([("overlap", scores, labels)], "t")
    e = eer(scores, labels)
    (marker,) = _eer_markers(fig)
    assert np.allclose(marker.get_xdata(), norm.ppf(e)) and np.allclose(marker.get_ydata(), norm.ppf(e))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"overlap (EER {100 * e:.2f} %)" in legend
    assert notes == [f"overlap: EER {100 * e:.2f} % marked"]


def test_a_protocol_without_errors_says_so():
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.0, -0.2])
    labels = np.array([1, 1, 1, 0, 0, 0])
    fig, notes = det_figure([("clean", scores, labels)], "t")
    assert not _eer_markers(fig)
    assert notes[0].startswith("clean: no errors to draw")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "clean: no errors (EER 0.00 %)" in legend
    assert any("no errors to draw" in t.get_text() for t in fig.axes[0].texts)


def test_bench_accuracy_on_the_in_repo_protocol_writes_the_plot(tmp_path, capsys, model_dir):
    from gateway.cli import main as cli
    png = tmp_path / "det.png"
    assert cli.main(["bench", "accuracy", "--protocol", str(PROTOCOLS / "ls-other-tel2s"), "--det", str(png),
                     "--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 10_000
    det_line = next(ln for ln in out.splitlines() if ln.startswith("DET curve:"))
    assert "ls-other-tel2s: " in det_line and ("marked" in det_line or "no errors to draw" in det_line), out
    assert out.strip().splitlines()[-2].startswith("EER: ")
