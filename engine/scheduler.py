"""The encoder scheduler: urgent live jobs, background live jobs, then file work."""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .state import _Job
from .threads import _lower_thread_priority
from .types import EngineError

if TYPE_CHECKING:
    from .pipeline import _Core

log = logging.getLogger("vbgw.engine")


@dataclass(eq=False)
class _FileTask:
    """A unit of file work (an uploaded file's next block: decoding, VAD, its windows'
    embeddings, fingerprint): `fn()` runs on a file thread, `done(result, exc)` follows."""
    fn: Callable[[], object]
    done: Callable[[object, BaseException | None], None]


class _Scheduler:
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

    def __init__(self, core: "_Core", threads: int, on_done: Callable[[], None],
                 file_threads: int = 1, file_nice: int = 10):
        self._core = core
        self._on_done = on_done
        self._cv = threading.Condition()
        self._urgent: deque[_Job] = deque()
        self._background: deque[_Job] = deque()
        self._files: deque[_FileTask] = deque()
        self._running = 0
        self.file_running = 0
        self._stop = False
        self.queued_samples = 0
        self._file_nice = file_nice
        self.finished: deque[_Job] = deque()      # appended by encoder threads, drained by the coordinator
        self._threads = [threading.Thread(target=self._loop, name=f"vbgw-encoder-{i}", daemon=True)
                         for i in range(max(1, threads))]
        self._threads += [threading.Thread(target=self._file_loop, name=f"vbgw-files-{i}", daemon=True)
                          for i in range(max(1, file_threads))]
        for t in self._threads:
            t.start()

    def submit(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        with self._cv:
            for j in jobs:
                (self._urgent if j.urgent else self._background).append(j)
                self.queued_samples += len(j.audio)
            self._cv.notify_all()

    def submit_file(self, task: _FileTask) -> None:
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
            rest: deque[_Job] = deque()
            for j in self._background:
                if id(j.state) in states:
                    j.urgent = True
                    self._urgent.append(j)
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
    def _next_live(self) -> _Job | None:
        if self._urgent:
            return self._urgent.popleft()
        if self._background:
            return self._background.popleft()
        return None

    def _next_file(self) -> _FileTask | None:
        if self._urgent or self._background or not self._files:
            return None                  # live work first, whatever is waiting
        return self._files.popleft()

    # -- threads ---------------------------------------------------------------------
    def _wait_for(self, take: Callable):
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
                if self._files and not (self._urgent or self._background):
                    self._cv.notify_all()           # the live queues drained: file work may go
            try:
                self._core.run_job(job)
            except Exception:  # noqa: BLE001 - a failed job yields no embedding, never a dead thread
                log.exception("encoder job failed")
                job.result = None
                self._core.finish_job(job)
            finally:
                with self._cv:
                    self._running -= 1
                self.finished.append(job)
                self._on_done()

    def _file_loop(self) -> None:
        _lower_thread_priority(self._file_nice)
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

