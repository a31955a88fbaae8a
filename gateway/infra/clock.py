"""The gateway's one clock for stored and published times: unix epoch milliseconds (the unit of
every `*_ms` column and every `*_ts` event field)."""
from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000
