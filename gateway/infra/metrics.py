"""A few Prometheus metrics rendered by hand in the text exposition format."""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
from typing import Callable


def sample_text(v: float) -> str:
    """A sample value as the exposition format writes it, exactly: whole numbers as integers,
    others in Python's shortest round-trip form, +Inf, -Inf, NaN. (`:g` kept six significant
    digits: a counter past a million moved in steps of ten or more.)"""
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2 ** 53 else repr(v)


class Histogram:
    BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

    def __init__(self):
        self.counts = [0] * (len(self.BUCKETS) + 1)
        self.total = 0.0
        self.n = 0
        self.samples: list[float] = []   # bounded reservoir for quantiles in benchmarks

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.BUCKETS, v)] += 1
        self.total += v
        self.n += 1
        if len(self.samples) < 100_000:
            self.samples.append(v)

    def quantile(self, q: float) -> float | None:
        if not self.samples:
            return None
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))]


class Metrics:
    def __init__(self):
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.histograms: dict[str, Histogram] = defaultdict(Histogram)
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        self.counters[(name, tuple(sorted(labels.items())) if labels else ())] += value

    def observe(self, name: str, value: float) -> None:
        self.histograms[name].observe(value)

    def gauge(self, name: str, fn: Callable[[], float]) -> None:
        self.gauges[name] = fn

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(self.counters.items()):
            if name not in seen:
                lines.append(f"# TYPE {name} counter")
                seen.add(name)
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{lab}}} {sample_text(value)}" if lab else f"{name} {sample_text(value)}")
        for name, fn in sorted(self.gauges.items()):
            try:
                value = fn()
            except Exception:  # noqa: BLE001 - a failing gauge is left out of the page
                continue
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {sample_text(value)}")
        for name, h in sorted(self.histograms.items()):
            lines.append(f"# TYPE {name} histogram")
            acc = 0
            for le, c in zip(h.BUCKETS, h.counts):
                acc += c
                lines.append(f'{name}_bucket{{le="{le}"}} {acc}')
            lines.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
            lines.append(f"{name}_sum {sample_text(h.total)}")
            lines.append(f"{name}_count {h.n}")
        return "\n".join(lines) + "\n"
