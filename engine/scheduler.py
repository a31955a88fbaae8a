"""The encoder scheduler: which CPU work runs next, live calls always first.

Three lanes, in priority order: urgent live jobs (a milestone waits for them), background
live jobs (windows only speaker change waits for) and file work (uploaded files, block by
block). Encoder threads take only live jobs, and with two or more threads background windows
run one at a time (a thread stays free for the next milestone's job); file threads take file
work only while no live job is queued. See EncoderScheduler.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from .state import EncoderJob
from .threads import lower_thread_priority
from .types import SAMPLE_RATE, EngineError

log = logging.getLogger("vbgw.engine")
T = TypeVar("T")

BACKGROUND_SPILL_S = 30.0   # queued background audio beyond which every encoder thread takes it


class JobRunner(Protocol):
    """What the encoder threads call: the engine's Pipeline (tests put a recorder here)."""

    def run_job(self, job: EncoderJob) -> None: ...

    def finish_job(self, job: EncoderJob) -> None: ...


@dataclass(eq=False)
class FileTask:
    """A unit of file work (an uploaded file's next block: decoding, VAD, its windows'
    embeddings, fingerprint): `fn()` runs on a file thread, `done(result, exc)` follows."""
    fn: Callable[[], object]
    done: Callable[[object, BaseException | None], None]


class EncoderScheduler:
    """Runs encoder jobs on `threads` threads of their own, urgent (milestone) jobs first;
    file work (uploaded files: batch enrolment, blocklist and Aculab uploads) on
    `file_threads` threads of its own, last.

    The engine worker (the coordinator) only queues jobs and collects finished ones, so
    the VAD of new audio, the window bookkeeping and the encoder run at the same time on
    different cores (ONNX Runtime releases the GIL) instead of one after the other.

    Live calls come first, in three ways: the order (urgent live jobs, then background live
    jobs, then file work: a file thread takes file work only while no live job is queued),
    the bound on file work (at most `file_threads` files' blocks run at once, never on a
    live thread, so a live job never waits behind a file), and the CPU (file threads run at
    `file_nice` on Linux, so under load the OS hands the cores to live work first)."""

    def __init__(self, runner: JobRunner, threads: int, on_done: Callable[[], None],
                 file_threads: int = 1, file_nice: int = 10):
        self._runner = runner
        self._on_done = on_done
        self._cv = threading.Condition()
        self._urgent: deque[EncoderJob] = deque()
        self._background: deque[EncoderJob] = deque()
        self._files: deque[FileTask] = deque()
        self._running = 0
        # With several encoder threads, one is kept for urgent jobs while background work
        # waits (see _next_live); background work spills onto it only past BACKGROUND_SPILL_S.
        self._background_slots = max(1, int(threads) - 1)
        self._background_running = 0
        self._background_samples = 0
        self.file_running = 0
        self._stop = False
        self.queued_samples = 0
        self._file_nice = file_nice
        self.finished: deque[EncoderJob] = deque()      # appended by encoder threads, drained by the coordinator
        self._threads = [threading.Thread(target=self._loop, name=f"vbgw-encoder-{i}", daemon=True)
                         for i in range(max(1, threads))]
        self._threads += [threading.Thread(target=self._file_loop, name=f"vbgw-files-{i}", daemon=True)
                          for i in range(max(1, file_threads))]
        for t in self._threads:
            t.start()

    def submit(self, jobs: list[EncoderJob]) -> None:
        if not jobs:
            return
        with self._cv:
            for j in jobs:
                if j.urgent:
                    self._urgent.append(j)
                else:
                    self._background.append(j)
                    self._background_samples += len(j.audio)
                self.queued_samples += len(j.audio)
            self._cv.notify_all()

    def submit_file(self, task: FileTask) -> None:
        with self._cv:
            if self._stop:
                raise EngineError("engine stopped")
            self._files.append(task)
            self._cv.notify_all()

    @property
    def files_queued(self) -> int:
        return len(self._files)

    def promote(self, states: set[int]) -> None:
        """Queued jobs of these states (ids) jump the queue: a milestone waits for them."""
        with self._cv:
            rest: deque[EncoderJob] = deque()
            for j in self._background:
                if id(j.state) in states:
                    j.urgent = True
                    self._urgent.append(j)
                    self._background_samples -= len(j.audio)
                else:
                    rest.append(j)
            self._background = rest

    def idle(self) -> bool:
        with self._cv:
            return not (self._urgent or self._background or self._running or self._files or self.file_running)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            dropped, self._files = list(self._files), deque()
            self._cv.notify_all()
        for task in dropped:
            task.done(None, EngineError("engine stopped"))
        for t in self._threads:
            t.join(5.0)

    # -- the order (called with self._cv held) ---------------------------------------
    def _next_live(self) -> EncoderJob | None:
        """Urgent jobs first; a background job only while fewer than `_background_slots`
        run, so with two or more threads one is always free for the next milestone's job
        (a milestone waiting behind two 10 s windows on contended cores). A background
        queue past BACKGROUND_SPILL_S of audio takes every thread: windows must not fall
        behind without bound (speaker change and refined NORMALs wait for them)."""
        if self._urgent:
            return self._urgent.popleft()
        if self._background and (self._background_running < self._background_slots
                                 or self._background_samples > BACKGROUND_SPILL_S * SAMPLE_RATE):
            job = self._background.popleft()
            self._background_samples -= len(job.audio)
            return job
        return None

    def _next_file(self) -> FileTask | None:
        if self._urgent or self._background or not self._files:
            return None                  # live work first, whatever is waiting
        return self._files.popleft()

    # -- threads ---------------------------------------------------------------------
    def _wait_for(self, take: Callable[[], T | None]) -> T | None:
        """With the lock held: the next item `take()` gives, waiting for one; None on stop."""
        while not self._stop and (item := take()) is None:
            self._cv.wait()
        return None if self._stop else item

    def _loop(self) -> None:
        while True:
            with self._cv:
                job = self._wait_for(self._next_live)
                if job is None:
                    return
                self.queued_samples -= len(job.audio)
                self._running += 1
                background = not job.urgent
                if background:
                    self._background_running += 1
                if self._files and not (self._urgent or self._background):
                    self._cv.notify_all()           # the live queues drained: file work may go
            try:
                self._runner.run_job(job)
            except Exception:  # noqa: BLE001 - a failed job yields no embedding, never a dead thread
                log.exception("encoder job failed")
                job.result = None
                self._runner.finish_job(job)
            finally:
                with self._cv:
                    self._running -= 1
                    if background:
                        # the slot is free; this thread takes the next window itself when it
                        # loops round, so no other thread needs waking
                        self._background_running -= 1
                self.finished.append(job)
                self._on_done()

    def _file_loop(self) -> None:
        lower_thread_priority(self._file_nice)
        while True:
            with self._cv:
                task = self._wait_for(self._next_file)
                if task is None:
                    return
                self.file_running += 1
            try:
                res, exc = task.fn(), None
            except Exception as e:  # noqa: BLE001 - reported to the waiting caller
                res, exc = None, e
            finally:
                with self._cv:
                    self.file_running -= 1
            try:
                task.done(res, exc)
            except Exception:  # noqa: BLE001
                log.exception("file work callback failed")

