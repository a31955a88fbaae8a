"""The /metrics page's numbers are exact. Found by `vbgw bench nice` at 125 contacts: it
counted 999,995 of 1,000,000 frames, "dropped audio" that the gateway had received, because
counters were written with Python's `:g` (six significant digits): 1,001,375 frames showed as
1.00138e+06, and a scraper's rate() over such a counter stands still for 10 s at a time."""
from __future__ import annotations

import math

from gateway.infra.metrics import Metrics


def values(text: str) -> dict[str, float]:
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_large_counters_gauges_and_sums_render_exactly():
    m = Metrics()
    m.inc("vbgw_frames_total", 1_001_375)
    m.inc("vbgw_results_total", 3, type="NORMAL")
    m.inc("vbgw_engine_audio_seconds", 123_456.789)
    m.gauge("vbgw_big", lambda: 2 ** 40 + 1)
    m.gauge("vbgw_none", lambda: math.inf)
    for v in (0.125, 1_234_567.5):
        m.observe("vbgw_delay_seconds", v)
    got = values(m.render())
    assert got["vbgw_frames_total"] == 1_001_375
    assert got['vbgw_results_total{type="NORMAL"}'] == 3
    assert got["vbgw_engine_audio_seconds"] == 123_456.789
    assert got["vbgw_big"] == 2 ** 40 + 1
    assert got["vbgw_none"] == math.inf
    assert got["vbgw_delay_seconds_sum"] == 1_234_567.625 and got["vbgw_delay_seconds_count"] == 2
    text = m.render()
    assert "vbgw_frames_total 1001375\n" in text and "vbgw_none +Inf\n" in text and "e+" not in text
