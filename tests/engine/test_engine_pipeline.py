"""The engine's pipeline: encoder scheduling order, the first NORMAL's cut window, and
callers waiting on a session never hanging or holding up other sessions."""
import asyncio
import threading
import time

import numpy as np

from engine import Engine, EngineConfig, EngineError, Milestone, SpeechLimits
from engine.scheduler import EncoderScheduler
from engine.state import EncoderJob, SessionState
from engine.vad import CHUNK_MS
from engine_support import speaker_audio, speakers

WAIT = 30.0            # an upper bound for events on a loaded machine, never a measurement


class _RecordingCore:
    """Stands in for the Pipeline in the scheduler: records the order jobs run in. The first job
    says it started, then blocks until released, so everything submitted meanwhile is queued;
    `all_done` is set once the scheduler reported `expected` jobs done (its on_done hook, called
    after its own bookkeeping). Events, not sleeps: a loaded machine only makes it slower."""

    def __init__(self, expected: int):
        self.order: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.all_done = threading.Event()
        self.expected = expected
        self.done = 0

    def run_job(self, job):
        if not self.order and not self.started.is_set():
            self.started.set()
            self.release.wait(WAIT)
        self.order.append(job.audio)

    def job_done(self):
        self.done += 1
        if self.done >= self.expected:
            self.all_done.set()

    def finish_job(self, job):
        job.done = True


def test_urgent_jobs_and_promoted_sessions_run_first():
    core = _RecordingCore(expected=5)
    sched = EncoderScheduler(core, 1, core.job_done)
    try:
        a, b = object(), object()
        sched.submit([EncoderJob("blocker", state=a)])
        assert core.started.wait(WAIT)                    # the one thread is now busy
        sched.submit([EncoderJob("bg-a1", state=a), EncoderJob("bg-b1", state=b), EncoderJob("bg-a2", state=a)])
        sched.submit([EncoderJob("urgent-b", urgent=True, state=b)])
        sched.promote({id(b)})                            # b's milestone waits for bg-b1 too
        core.release.set()
        assert core.all_done.wait(WAIT)
        assert core.order == ["blocker", "urgent-b", "bg-b1", "bg-a1", "bg-a2"]
        assert sched.idle() and sched.queued_samples == 0
    finally:
        sched.stop()


def test_first_normal_cuts_the_window_instead_of_embedding_a_partial(engine_sync):
    """NORMAL's embedding is the first window's, and that window is not embedded again:
    the only audio embedded twice is EARLY's partial window."""
    core = engine_sync._pipeline
    a = speaker_audio(speakers()[2], 3)[: 8000 * 25]
    st = SessionState("cut", SpeechLimits(early_ms=2000, verify_ms=5000), None, core.window_samples)
    before = core.speech_s
    embedded = []
    run_jobs = core.run_jobs

    def recording(jobs):
        embedded.extend((j.window is not None, len(j.audio)) for j in jobs)
        run_jobs(jobs)
    core.run_jobs = recording
    try:
        events = []
        for k in range(0, len(a), 1600):
            st.pending.append((time.monotonic(), a[k:k + 1600]))
            st.pending_samples += 1600
            events += core.process([st], None)
    finally:
        core.run_jobs = run_jobs
    ms = [e for _, e in events if isinstance(e, Milestone)]
    assert [m.kind for m in ms][:2] == ["EARLY", "NORMAL"]
    first = st.speech.windows[0]
    assert 5000 <= first.speech_ms <= 5000 + CHUNK_MS
    assert np.allclose(ms[1].embedding.vector, first.vector, atol=1e-6)
    partials = [n for is_window, n in embedded if not is_window]
    assert len(partials) == 1                     # EARLY's partial; NORMAL embedded a window
    # every sample that reached a window was embedded once
    window_audio = sum(n for is_window, n in embedded if is_window)
    assert abs((core.speech_s - before) - (window_audio + partials[0]) / 8000) < 1e-6


async def test_waiting_calls_on_many_sessions_all_answer(engine):
    """Closing, flushing and embedding many sessions at once: every call answers and the
    embeddings are those of each session's own audio."""
    spk = speakers()
    audio = [speaker_audio(spk[i % 4], 3)[: 8000 * 14] for i in range(8)]
    sessions = [engine.open_session(f"d{i}", SpeechLimits(), lambda e: None) for i in range(8)]
    for s, a in zip(sessions, audio):
        for k in range(0, len(a), 1600):
            s.push("customer", a[k:k + 1600])
    embs = await asyncio.wait_for(asyncio.gather(*[s.embedding() for s in sessions]), 60)
    assert all(e is not None and e.speech_ms > 5000 for e in embs)
    # same speaker -> closer than other speakers (sessions i and i+4 share a speaker)
    for i in range(4):
        same = float(embs[i].vector @ embs[i + 4].vector)
        other = float(embs[i].vector @ embs[(i + 1) % 4].vector)
        assert same > other
    await asyncio.wait_for(asyncio.gather(*[s.flush() for s in sessions[:4]],
                                          *[s.close() for s in sessions[4:]]), 60)
    assert engine.stats().sessions == 4


async def test_stopping_the_engine_fails_waiting_callers(model_dir):
    eng = Engine.load(EngineConfig(model_dir=model_dir))
    await eng.start()
    s = eng.open_session("stop", SpeechLimits(), lambda e: None)
    a = speaker_audio(speakers()[1], 3)
    for k in range(0, len(a), 1600):
        s.push("customer", a[k:k + 1600])
    waiting = asyncio.ensure_future(s.embedding())
    await eng.stop()
    try:
        res = await asyncio.wait_for(waiting, 10)      # answered before the stop, or failed by it
        assert res is None or res.speech_ms > 0
    except EngineError:
        pass


async def test_flush_returns_only_after_its_milestones_were_delivered(engine):
    """A caller that flushes and then publishes the call's end (the dialog does) must find
    every milestone of the call already delivered: no sleep between flush and the check."""
    a = speaker_audio(speakers()[3], 3)[: 8000 * 12]
    for trial in range(12):
        events = []
        s = engine.open_session(f"f{trial}", SpeechLimits(), events.append)
        for k in range(0, len(a), 1600):
            s.push("customer", a[k:k + 1600])
        await s.flush()
        kinds = [e.kind for e in events if isinstance(e, Milestone)]
        assert kinds[:2] == ["EARLY", "NORMAL"], (trial, kinds)
        await s.close()
