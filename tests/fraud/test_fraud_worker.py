"""The fraud worker's order: work a result waits for runs ahead of queued background passes,
its errors reach the caller, a failing background pass does not stop the worker, and closing
finishes what was queued."""
from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.services.fraud import FraudWorker


async def test_waited_for_work_runs_ahead_of_queued_background_passes():
    w = FraudWorker(threads=1)
    gate, order = threading.Event(), []
    try:
        w.submit(lambda: gate.wait(10))              # the pass in progress
        for i in range(5):
            w.submit(lambda i=i: order.append(f"bg{i}"))
        urgent = asyncio.ensure_future(w.run(lambda: order.append("result") or 42))
        await asyncio.sleep(0.05)
        gate.set()
        assert await urgent == 42
        await asyncio.to_thread(w.close)
    finally:
        gate.set()
    assert order == ["result", "bg0", "bg1", "bg2", "bg3", "bg4"]


async def test_errors_reach_the_caller_and_a_bad_pass_does_not_stop_the_worker():
    w = FraudWorker(threads=2)
    try:
        w.submit(lambda: 1 / 0)                      # logged, the worker goes on
        with pytest.raises(ZeroDivisionError):
            await w.run(lambda: 1 / 0)
        assert await w.run(lambda: "still here") == "still here"
    finally:
        await asyncio.to_thread(w.close)
    with pytest.raises(RuntimeError):
        await w.run(lambda: None)                    # closed: refused, not hung


async def test_close_finishes_the_queued_passes():
    w = FraudWorker(threads=2)
    done = []
    for i in range(20):
        w.submit(lambda i=i: done.append(i))
    await asyncio.to_thread(w.close)
    assert sorted(done) == list(range(20))
    w.submit(lambda: done.append("late"))            # after close: dropped
    assert "late" not in done
