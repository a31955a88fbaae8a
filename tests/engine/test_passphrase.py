"""engine.passphrase: the text-dependent content check on real speech (FSDD digits in
tests/data/fsdd, through the telephony channel the bench uses)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine import passphrase as pp
from tools.protocol import read_audio

DATA = Path(__file__).resolve().parents[1] / "data" / "fsdd"


def utterance(engine, phrase: str, speaker: str, index: int, seed: int) -> np.ndarray:
    """The digits' recordings cut to their speech, joined with short pauses, level set and
    G.711 mu-law coded, as `vbgw bench passphrase` builds its protocol."""
    from tools.bench.passphrase import telephony, trimmed
    parts = [trimmed(engine, read_audio(DATA / f"{d}_{speaker}_{index}.wav")) for d in phrase]
    assert all(p is not None for p in parts)
    return telephony(parts, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def cal():
    return pp.ContentCalibration.load()


@pytest.fixture(scope="module")
def george(engine_sync):
    """george's registered passphrase 3-5-8 (three utterances), as stored (float16 blob)."""
    model = pp.PassphraseModel()
    for k in range(3):
        f = engine_sync.phrase_features(utterance(engine_sync, "358", "george", k, seed=k))
        assert f is not None
        model.add(f)
    return pp.PassphraseModel.from_bytes(model.to_bytes())


@pytest.fixture(scope="module")
def attempts(engine_sync):
    def feats(phrase, speaker):
        return engine_sync.phrase_features(utterance(engine_sync, phrase, speaker, 30, seed=99))
    return {"right": feats("358", "george"), "wrong": feats("162", "george"),
            "one_digit": feats("368", "george"), "other_speaker": feats("358", "lucas")}


def test_right_phrase_passes_and_wrong_phrase_fails_the_content_check(george, attempts, cal):
    right = george.score(attempts["right"], cal)
    wrong = george.score(attempts["wrong"], cal)
    assert right.llr >= cal.pass_llr, right
    assert wrong.llr < cal.pass_llr, wrong
    assert wrong.cost > right.cost + 0.05
    assert len(right.costs) == 3


def test_one_changed_digit_costs_more_than_the_right_phrase(george, attempts, cal):
    right = george.score(attempts["right"], cal)
    near = george.score(attempts["one_digit"], cal)
    wrong = george.score(attempts["wrong"], cal)
    assert right.cost < near.cost < wrong.cost


def test_another_speaker_saying_the_phrase_is_further_than_the_user(george, attempts, cal):
    # The templates are the user's own voice: another speaker's right phrase aligns, but less well.
    assert george.score(attempts["other_speaker"], cal).cost > george.score(attempts["right"], cal).cost


def test_text_dependent_score_needs_voice_and_content(engine_sync, george, attempts, cal):
    from engine import BandTargets
    th = engine_sync.thresholds(BandTargets())
    vpass, vspan = th["TRUE_LOW"], max(th["TRUE_HIGH"] - th["TRUE_LOW"], 1.0)
    cspan = cal.high_llr - cal.pass_llr
    reg = [utterance(engine_sync, "358", "george", k, seed=k) for k in range(3)]
    embs = engine_sync.embed_many_sync(reg)
    vp = embs[0]
    for e in embs[1:]:
        vp = engine_sync.merge(vp.vector, vp.speech_ms, e)
    out = {}
    for name, phrase, spk in (("right", "358", "george"), ("wrong", "162", "george"), ("other", "358", "lucas")):
        audio = utterance(engine_sync, phrase, spk, 30, seed=99)
        voice = engine_sync.score(engine_sync.embed_many_sync([audio])[0], vp.vector).llr
        content = george.score(engine_sync.phrase_features(audio), cal).llr
        out[name] = (voice, pp.text_dependent_llr(voice, content, vpass, vspan, cal.pass_llr, cspan))
    assert out["right"][1] >= vpass                       # verified
    assert out["wrong"][0] >= vpass > out["wrong"][1]     # the voice alone would verify it; the phrase does not
    assert out["other"][1] < vpass                        # an impostor fails


def test_combination_is_the_smaller_margin_on_the_voice_scale():
    # voice margin 1.0 (one span above pass), content margin -0.5: the content decides
    v = pp.text_dependent_llr(voice_llr=5.0, content_llr=0.0, voice_pass=3.0, voice_span=2.0,
                              content_pass=1.0, content_span=2.0)
    assert v == pytest.approx(3.0 + 2.0 * -0.5)
    # content far better than the voice: the voice score is kept unchanged
    assert pp.text_dependent_llr(4.0, 50.0, 3.0, 2.0, 1.0, 2.0) == pytest.approx(4.0)


def test_silence_and_noise_have_no_phrase(engine_sync):
    assert engine_sync.phrase_features(np.zeros(16000, np.int16)) is None
    noise = (np.random.default_rng(1).standard_normal(16000) * 30).astype(np.int16)
    assert engine_sync.phrase_features(noise) is None


def test_dtw_basics():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 2 * pp.N_CEPS)).astype(np.float32)
    assert pp.dtw_cost(a, a) == pytest.approx(0.0, abs=1e-6)
    slow = np.repeat(a, 2, axis=0)                        # the same "words", spoken twice as slowly
    assert pp.dtw_cost(a, slow) < 0.05 < pp.dtw_cost(a, rng.standard_normal(a.shape).astype(np.float32))
    assert math.isinf(pp.dtw_cost(a, np.repeat(a, 4, axis=0)))   # 4x the speech: not the same phrase
    assert math.isfinite(pp.dtw_cost(a, np.repeat(a, 3, axis=0)))
    assert math.isinf(pp.dtw_cost(a[:0], a))


def test_blob_round_trip_bounds_and_refusals(george):
    blob = george.to_bytes()
    back = pp.PassphraseModel.from_bytes(blob)
    assert len(back.templates) == 3 and back.feature_id == pp.FEATURE_ID
    for t, u in zip(george.templates, back.templates):
        np.testing.assert_array_equal(t, u)              # already float16-exact
    # a second of speech costs under 1 kB: 50 frames x 24 dims x 2 bytes
    assert len(blob) < 6 + len(pp.FEATURE_ID) + 1 + sum(3 + 2 * t.size for t in george.templates) + 1
    m = pp.PassphraseModel()
    for _ in range(pp.MAX_TEMPLATES + 3):
        m.add(george.templates[0])
    assert len(m.templates) == pp.MAX_TEMPLATES
    import struct
    fid = pp.FEATURE_ID.encode()
    head = b"VBPP" + struct.pack("<BB", 1, len(fid)) + fid
    too_many = head + struct.pack("<B", pp.MAX_TEMPLATES + 1)
    too_long = head + struct.pack("<BHB", 1, pp.MAX_FRAMES + 1, 24) + b"\0" * (2 * 24 * (pp.MAX_FRAMES + 1))
    for bad in (b"", b"nope", blob[:-1], blob + b"\0", b"VBPP\x09" + blob[5:], too_many, too_long):
        with pytest.raises(pp.PassphraseError):
            pp.PassphraseModel.from_bytes(bad)
    with pytest.raises(pp.PassphraseError):
        m.add(np.zeros((10, 3), np.float32))
    old = pp.PassphraseModel(list(george.templates), "mfcc-old")
    with pytest.raises(pp.PassphraseError):
        old.costs(george.templates[0])
