"""File work (uploaded recordings) comes after live calls: the scheduler's order, the bound
on concurrent file work, the file threads' lower OS priority, and the memory of a file's
embedding whatever its length (issue #12, item 1). All by construction, none by timing."""
from __future__ import annotations

import asyncio
import sys
import threading
import time

import numpy as np
import pytest

from engine import SpeechLimits
from engine.facade import FILE_BLOCK_S
from engine.scheduler import EncoderScheduler, FileTask
from engine.state import EncoderJob
from engine_support import speaker_audio, speakers

WAIT = 30.0            # an upper bound for events on a loaded machine, never a measurement


class _GatedCore:
    """Stands in for the Pipeline: a live job waits for its own gate, and records when it ran."""

    def __init__(self):
        self.order: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def gate(self, name: str) -> None:
        self.gates[name] = threading.Event()
        self.started[name] = threading.Event()

    def run_job(self, job):
        name = job.audio
        if name in self.started:
            self.started[name].set()
            self.gates[name].wait(WAIT)
        self.order.append(name)

    def finish_job(self, job):
        job.done = True


def _file_task(core: _GatedCore, name: str, done: list, concurrency: list, sched: EncoderScheduler) -> FileTask:
    def fn():
        concurrency.append(sched.file_running)
        core.order.append(name)
        return name
    return FileTask(fn, lambda res, exc: done.append((res, exc)))


def test_the_order_is_urgent_live_then_background_live_then_file_work():
    core = _GatedCore()
    sched = EncoderScheduler(core, 1, lambda: None, file_threads=1, file_nice=0)
    try:
        with sched._cv:                  # the threads cannot take anything while we queue
            sched._files.extend([FileTask(lambda: None, lambda r, e: None) for _ in range(2)])
            sched._background.append(EncoderJob("bg"))
            sched._urgent.append(EncoderJob("urgent", urgent=True))
            assert sched._next_file() is None            # live work is queued: files wait
            assert sched._next_live().audio == "urgent"
            assert sched._next_file() is None
            assert sched._next_live().audio == "bg"
            assert sched._next_live() is None            # live threads never take file work
            assert sched._next_file() is not None        # nothing live queued: file work goes
            sched._files.clear()
    finally:
        sched.stop()


def test_file_work_waits_for_queued_live_work_and_runs_one_file_at_a_time():
    core = _GatedCore()
    sched = EncoderScheduler(core, 1, lambda: None, file_threads=1, file_nice=0)
    done: list = []
    concurrency: list[int] = []
    try:
        core.gate("blocker")
        sched.submit([EncoderJob("blocker")])
        assert core.started["blocker"].wait(WAIT)        # the only live thread is busy
        sched.submit([EncoderJob("bg-1"), EncoderJob("bg-2")])
        for i in range(3):
            sched.submit_file(_file_task(core, f"file-{i}", done, concurrency, sched))
        # Live work is queued, so the idle file thread must not start any file work.
        assert core.order == [] and sched.files_queued == 3
        sched.submit([EncoderJob("urgent", urgent=True)])
        core.gates["blocker"].set()
        for _ in range(int(WAIT / 0.01)):
            if len(done) == 3:
                break
            time.sleep(0.01)
        assert core.order == ["blocker", "urgent", "bg-1", "bg-2", "file-0", "file-1", "file-2"]
        assert [r for r, _ in done] == ["file-0", "file-1", "file-2"]
        assert concurrency == [1, 1, 1]                  # never two files at once (file_threads=1)
        assert sched.idle()
    finally:
        sched.stop()


def test_file_work_failures_reach_the_caller_and_stop_fails_what_is_queued():
    core = _GatedCore()
    sched = EncoderScheduler(core, 1, lambda: None, file_threads=1, file_nice=0)
    got: list = []
    ran = threading.Event()

    def boom():
        raise ValueError("bad block")
    sched.submit_file(FileTask(boom, lambda r, e: (got.append(e), ran.set())))
    assert ran.wait(WAIT) and isinstance(got[0], ValueError)
    core.gate("blocker")
    sched.submit([EncoderJob("blocker")])
    assert core.started["blocker"].wait(WAIT)
    sched.submit([EncoderJob("bg")])                     # keeps the file thread waiting
    failed = threading.Event()
    sched.submit_file(FileTask(lambda: "never", lambda r, e: (got.append(e), failed.set())))
    stopper = threading.Thread(target=sched.stop)
    stopper.start()
    assert failed.wait(WAIT)                             # failed at stop, never run
    core.gates["blocker"].set()
    stopper.join(WAIT)
    assert len(got) == 2 and "stopped" in str(got[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_file_threads_run_at_a_lower_os_priority():
    core = _GatedCore()
    sched = EncoderScheduler(core, 1, lambda: None, file_threads=2, file_nice=10)
    try:
        tids: list[int] = []
        done = threading.Event()

        def who():
            tids.append(threading.get_native_id())
            done.set()
        sched.submit_file(FileTask(who, lambda r, e: None))
        assert done.wait(WAIT)
        import os
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, tids[0]) == min(19, base + 10)
        live = [t.native_id for t in sched._threads if t.name.startswith("vbgw-encoder")]
        assert all(os.getpriority(os.PRIO_PROCESS, t) == base for t in live)
    finally:
        sched.stop()


def test_a_file_embedding_needs_one_window_of_memory_whatever_its_length(engine_sync):
    """Five minutes of speech, block by block: the embedder never holds more than a window of
    audio plus its windows' vectors (the one-shot path held the whole file, several times),
    and its embedding is the one-shot path's."""
    core = engine_sync._pipeline
    one = speaker_audio(speakers()[2], 3)
    pcm = np.tile(one, int(np.ceil(300 * 8000 / len(one))))[: 300 * 8000]
    fe = engine_sync.file_embedder()
    step = int(FILE_BLOCK_S * 8000)
    window_bytes = core.window_samples * 2
    worst = 0
    for i in range(0, 60 * 8000, step):                   # the first minute: the bound, exactly
        fe.add(pcm[i:i + step])
        worst = max(worst, fe.memory_bytes())
    assert worst < window_bytes + step * 2 + 64 * 1024, worst
    emb = fe.result()
    ref = engine_sync.embed_many_sync([pcm[: 60 * 8000]])[0]
    assert emb.speech_ms == ref.speech_ms and float(emb.vector @ ref.vector) > 0.9999
    # ... and the same bound holds five times longer (vectors are 1 kB a window; they fold at MAX_WINDOWS).
    fe = engine_sync.file_embedder()
    for i in range(0, len(pcm), step):
        fe.add(pcm[i:i + step])
        worst = max(worst, fe.memory_bytes())
    assert worst < window_bytes + step * 2 + 64 * 1024, worst
    assert fe.result().speech_ms > 150_000


async def test_a_file_never_puts_work_in_live_calls_queues(engine):
    """Reproduction of the stall: a whole file's windows went to the encoder as urgent jobs,
    ahead of every live call's milestones. Now none of a file's work enters the live queues."""
    sched = engine._scheduler
    live_jobs: list[EncoderJob] = []
    submit = sched.submit

    def recording(jobs):
        live_jobs.extend(jobs)
        submit(jobs)
    sched.submit = recording
    one = speaker_audio(speakers()[1], 3)
    pcm = np.tile(one, 3)[: 8000 * 90]
    emb = await engine.embed_pcm(pcm)
    assert emb is not None and emb.speech_ms > 30_000
    assert live_jobs == []


async def test_uploads_run_as_file_work_beside_a_live_session(engine):
    """A live session is served while two files are embedded through the file thread."""
    spk = speakers()
    live = speaker_audio(spk[0], 2)[: 8000 * 12]
    files = [np.tile(speaker_audio(spk[i], 2), 2) for i in (1, 2)]
    sess = engine.open_session("live", SpeechLimits(), lambda e: None)
    uploads = [asyncio.ensure_future(engine.embed_pcm(f)) for f in files]
    for k in range(0, len(live), 1600):
        sess.push("customer", live[k:k + 1600])
    emb = await sess.embedding()
    assert emb is not None and emb.speech_ms > 5000
    got = await asyncio.gather(*uploads)
    assert all(e is not None and e.speech_ms > 10_000 for e in got)
    await sess.close()
