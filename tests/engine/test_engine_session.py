"""Sessions through the running worker: milestones, scores, memory, bad audio."""
import asyncio

import numpy as np
import pytest

from engine import (AudioError, Engine, EngineConfig, Milestone, SpeechLimits, SpeechProgress)
from engine_support import speaker_audio, speakers

FRAME = 1600   # 200 ms at 8 kHz


async def feed(sess, pcm, realtime=False, channel="customer", engine=None):
    """Push 200 ms frames; with `engine`, wait whenever its backlog exceeds 4 s (faster
    than real time, but without tripping the overload cap)."""
    for k in range(0, len(pcm), FRAME):
        sess.push(channel, pcm[k:k + FRAME])
        await asyncio.sleep(0.2 if realtime else 0)
        while engine is not None and engine.stats().queue_depth > 4 * 8000:
            await asyncio.sleep(0.01)


async def test_milestones_in_order_and_scores(engine):
    spk = speakers()
    a = speaker_audio(spk[0], 3)          # ~29 s of one speaker (two enrol files)
    events = []
    limits = SpeechLimits(early_ms=2000, verify_ms=5000, refine_ms=3000)
    sess = engine.open_session("d1", limits, events.append)
    # the first 14 s four times over: enough finished windows for refined NORMALs, while
    # a[20 s:26 s] below stays audio the session never heard
    await feed(sess, np.tile(a[: 8000 * 14], 4), engine=engine)
    emb = await sess.embedding()
    await sess.close()
    kinds = [e.kind for e in events if isinstance(e, Milestone)]
    assert kinds[:2] == ["EARLY", "NORMAL"] and set(kinds) == {"EARLY", "NORMAL"}
    ms = [e for e in events if isinstance(e, Milestone)]
    assert ms[0].embedding.speech_ms >= 2000 and ms[1].embedding.speech_ms >= 5000
    # refined NORMALs come with finished windows, at least refine_ms of speech apart
    refined = [m.embedding.speech_ms for m in ms[2:]]
    assert len(refined) >= 2, kinds
    gaps = [y - x for x, y in zip([ms[1].embedding.speech_ms] + refined, refined)]
    assert min(gaps) >= limits.refine_ms, gaps
    assert all(m.dialog_id == "d1" for m in ms)
    prog = [e.speech_ms for e in events if isinstance(e, SpeechProgress)]
    assert prog and prog == sorted(prog)
    assert emb is not None and emb.speech_ms >= ms[-1].embedding.speech_ms
    assert sess.speech_ms == emb.speech_ms          # counters survive close()
    n_events = len(events)
    sess.push("customer", a[:16000])      # after close: ignored, no events
    await asyncio.sleep(0.1)
    assert len(events) == n_events

    # same speaker (other audio) scores higher than a different speaker
    same = await engine.embed_pcm(a[8000 * 20: 8000 * 26])
    other = await engine.embed_pcm(speaker_audio(spk[1], 1)[: 8000 * 6])
    s_same, s_other = engine.score(same, emb.vector), engine.score(other, emb.vector)
    assert s_same.llr > 0 > s_other.llr
    assert s_same.bio_score > 0.9 and s_other.bio_score < 0.5


async def test_session_equals_embed_pcm(engine):
    a = speaker_audio(speakers()[2], 1)[: 8000 * 8]
    sess = engine.open_session("d2", SpeechLimits(), lambda e: None)
    await feed(sess, a)
    e1 = await sess.embedding()
    e2 = await engine.embed_pcm(a)
    assert e1.speech_ms == e2.speech_ms
    assert float(e1.vector @ e2.vector) > 0.9999
    await sess.close()


async def test_agent_channel_excluded(engine):
    a = speaker_audio(speakers()[3], 1)[: 8000 * 6]
    events = []
    sess = engine.open_session("d3", SpeechLimits(), events.append)
    await feed(sess, a, channel="agent")
    assert await sess.embedding() is None
    assert sess.speech_ms == 0 and not events
    await sess.close()


async def test_memory_bounded(engine):
    spk = speakers()
    a = np.concatenate([speaker_audio(s, 1) for s in spk[:9]])[: 8000 * 120]
    assert len(a) == 8000 * 120
    sess = engine.open_session("d4", SpeechLimits(), lambda e: None)
    await feed(sess, a, engine=engine)
    emb = await sess.embedding()
    assert emb is not None and emb.speech_ms > 60000
    assert sess.memory_bytes() < 1_000_000
    # nine speakers one after the other: the speaker-change detector fires
    assert sess.speaker_change.user_changed and sess.speaker_change.scd_llr < 0
    await sess.close()
    assert engine.stats().sessions == 0


async def test_overload_is_flagged(model_dir):
    eng = Engine.load(EngineConfig(model_dir=model_dir, max_backlog_s=2.0, max_pending_s=3.0))
    await eng.start()
    try:
        a = speaker_audio(speakers()[4], 1)[: 8000 * 10]
        events = []
        sess = eng.open_session("d6", SpeechLimits(), events.append)
        for k in range(0, len(a), FRAME):      # 10 s pushed at once: more than the cap
            sess.push("customer", a[k:k + FRAME])
        st = eng.stats()
        assert st.overloaded and st.extra["dropped_audio_s"] > 0
        emb = await sess.embedding()
        assert emb is None or emb.speech_ms <= 3500
        await sess.close()
    finally:
        await eng.stop()


async def test_bad_audio_never_raises_from_push(engine):
    events = []
    sess = engine.open_session("d5", SpeechLimits(), events.append)
    rng = np.random.default_rng(0)
    bad = [np.zeros(0, np.int16), np.zeros(0, np.float32), np.full(800, np.nan, np.float32),
           np.full(1600, np.inf), np.full(1600, 32767, np.int16), np.zeros((800, 2), np.int16),
           np.zeros(1600, np.int16), rng.integers(-5, 5, 1600).astype(np.int32), b"\x01\x02\x03",
           None, "text", np.zeros((2, 2, 2)), 12345, np.array(5, np.int16),
           (rng.standard_normal(800) * 40000).astype(np.float64)]
    for b in bad:
        sess.push("customer", b)
        sess.push("agent", b)
    # 10 s of digital silence and 5 s of a clipped square wave: no speech
    await feed(sess, np.zeros(80000, np.int16))
    sq = np.where((np.arange(40000) // 20) % 2, 32767, -32768).astype(np.int16)
    await feed(sess, sq)
    emb = await sess.embedding()
    assert emb is None or emb.speech_ms < 2000
    assert not [e for e in events if isinstance(e, Milestone)]
    await sess.close()


async def test_embed_pcm_bad_input(engine):
    with pytest.raises(AudioError):
        await engine.embed_pcm(np.zeros(8000, np.float32))
    with pytest.raises(AudioError):
        await engine.embed_pcm(np.full(8000, np.nan))
    with pytest.raises(AudioError):
        await engine.embed_pcm(np.zeros((8000, 2), np.int16))
    with pytest.raises(AudioError):
        await engine.embed_pcm([1, 2, 3])
    assert await engine.embed_pcm(np.zeros(0, np.int16)) is None
    assert await engine.embed_pcm(np.zeros(80000, np.int16)) is None
    assert await engine.embed_pcm(np.zeros(100, np.int16)) is None


async def test_stats_and_info(engine):
    st = engine.stats()
    assert st.overloaded is False and st.queue_depth == 0
    info = engine.info
    assert info.plda_version.startswith("cal-") and info.sw_version
    assert info.method == "cosine+linear-calibration"


def test_delayed_flag(engine_sync):
    """A milestone computed more than 1 s after its audio arrived says delayed=True."""
    import time

    from engine.state import SessionState
    core = engine_sync._pipeline
    a = speaker_audio(speakers()[5], 1)[: 8000 * 6]
    fresh = SessionState("fresh", SpeechLimits(), None, core.window_samples)
    old = SessionState("old", SpeechLimits(), None, core.window_samples)
    fresh.pending.append((time.monotonic(), a))
    old.pending.append((time.monotonic() - 5.0, a))
    fresh.pending_samples = old.pending_samples = len(a)
    events = core.process([fresh, old], None)
    ms = {(st.dialog_id, e.kind): e for st, e in events if isinstance(e, Milestone)}
    assert ms[("fresh", "EARLY")].delayed is False
    assert ms[("old", "EARLY")].delayed is True
    assert ms[("old", "EARLY")].embedding.speech_ms == ms[("fresh", "EARLY")].embedding.speech_ms


def test_no_speaker_change_for_one_speaker(engine_sync):
    from engine.state import SessionState
    core = engine_sync._pipeline
    a = speaker_audio(speakers()[6], 3)
    st = SessionState("one", SpeechLimits(), None, core.window_samples)
    st.pending.append((0.0, a))
    st.pending_samples = len(a)
    core.process([st], None, milestones=False)
    assert len(st.speech.windows) >= 2
    assert st.change.scd_llr is not None and not st.change.user_changed


def test_folding_old_windows_keeps_the_session_embedding():
    """Long calls: folding windows bounds memory and leaves every weighted mean unchanged."""
    from engine.state import SessionSpeech, Window
    rng = np.random.default_rng(3)
    sp = SessionSpeech(80000)
    sp.windows = [Window(int(rng.integers(2000, 10000)), rng.normal(size=192).astype(np.float32))
                  for _ in range(200)]
    sp.windows[5].vector = None                       # a window too short to embed

    def mean(ws):
        vs = [w for w in ws if w.vector is not None]
        return np.average(np.stack([w.vector for w in vs]), axis=0, weights=[w.speech_ms for w in vs])

    before, nbytes = mean(sp.windows), sp.nbytes()
    sp.fold(keep=16)
    assert len(sp.windows) == 16 and sp.nbytes() < nbytes / 10
    assert np.allclose(mean(sp.windows), before, atol=1e-5)


async def test_flush_publishes_the_speech_total_the_rate_limit_held_back(engine):
    """Audio faster than real time: progress is rate-limited, but after flush() the last
    SpeechProgress equals the session's speech total (the agent's clean-speech bar ends right)."""
    events = []
    sess = engine.open_session("d-progress", SpeechLimits(), events.append)
    await feed(sess, speaker_audio(speakers()[0], 1), engine=engine)
    await sess.flush()
    await asyncio.sleep(0.05)                       # deliveries are call_soon_threadsafe
    prog = [e.speech_ms for e in events if isinstance(e, SpeechProgress)]
    assert prog and prog[-1] == sess.speech_ms > 5000
    await sess.close()
