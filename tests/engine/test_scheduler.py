"""The encoder scheduler's live order: with two threads, background windows run one at a time
so the other thread is free for the next milestone's job; a long background queue spills onto
every thread."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.scheduler import BACKGROUND_SPILL_S, EncoderScheduler
from engine.state import EncoderJob
from engine.types import SAMPLE_RATE

WAIT = 10.0


class _Gated:
    """A runner whose jobs block until released; records which jobs are running."""

    def __init__(self):
        self.release: dict[int, threading.Event] = {}
        self.started: dict[int, threading.Event] = {}
        self.running: set[int] = set()
        self.lock = threading.Lock()

    def job(self, seconds: float = 1.0, urgent: bool = False) -> EncoderJob:
        j = EncoderJob(np.zeros(int(seconds * SAMPLE_RATE), np.int16), urgent=urgent)
        self.release[id(j)] = threading.Event()
        self.started[id(j)] = threading.Event()
        return j

    def run_job(self, job):
        with self.lock:
            self.running.add(id(job))
        self.started[id(job)].set()
        self.release[id(job)].wait(WAIT)
        with self.lock:
            self.running.discard(id(job))

    def finish_job(self, job):
        job.done = True


@pytest.fixture
def gated():
    """(runner, make(threads) -> scheduler); every job released and every scheduler stopped after."""
    core, made = _Gated(), []

    def make(threads: int) -> EncoderScheduler:
        made.append(EncoderScheduler(core, threads, lambda: None, file_threads=1, file_nice=0))
        return made[-1]
    yield core, make
    for e in core.release.values():
        e.set()
    for sched in made:
        sched.stop()


def test_one_thread_stays_free_for_urgent_jobs_while_background_work_waits(gated):
    core, make = gated
    sched = make(2)
    bg = [core.job() for _ in range(3)]
    sched.submit(bg)
    assert core.started[id(bg[0])].wait(WAIT)
    # the second thread does not take the next window while the first runs one
    assert not core.started[id(bg[1])].wait(0.3)
    urgent = core.job(urgent=True)
    sched.submit([urgent])
    assert core.started[id(urgent)].wait(WAIT)       # at once, beside the running window
    assert core.running == {id(bg[0]), id(urgent)}
    core.release[id(urgent)].set()
    core.release[id(bg[0])].set()
    assert core.started[id(bg[1])].wait(WAIT)
    assert not core.started[id(bg[2])].wait(0.3)     # still one window at a time


def test_a_long_background_queue_spills_onto_every_thread(gated):
    core, make = gated
    sched = make(2)
    n = int(BACKGROUND_SPILL_S / 10) + 3                 # 10 s windows: past the spill level
    bg = [core.job(10.0) for _ in range(n)]
    sched.submit(bg)
    assert core.started[id(bg[0])].wait(WAIT)
    assert core.started[id(bg[1])].wait(WAIT)        # both threads take windows


def test_one_thread_runs_background_work_too(gated):
    core, make = gated
    sched = make(1)
    bg = [core.job() for _ in range(2)]
    sched.submit(bg)
    assert core.started[id(bg[0])].wait(WAIT)
    core.release[id(bg[0])].set()
    assert core.started[id(bg[1])].wait(WAIT)
