"""The TTS detector's training pipeline on a tiny generated set, end to end and without torch or
any TTS engine: real telephony clips of speakers in each role (TRAIN / CAL / TEST), two vocoder
families made from them here (LPC source-filter and Griffin-Lim, pure numpy), the randomised
channel, frame features, leave-one-family-out, the weights file, and the run-time detector
loading and scoring it. The training tools live in tools/ and the run-time never imports them
(tests/test_import_graph.py)."""
from __future__ import annotations

import numpy as np
import pytest

from tools.protocol import read_audio
from support import protocol_audio

# real speakers by role (tools.train_tts_corpus): 1688/3005 TRAIN, 2414/367 CAL, 1998/3080 TEST;
# all from the in-repo protocol (tests/data: of 367 and 3080 it keeps one ~12 s enrolment file)
CLIPS = {"ls-1688": [f"1688_test{i}" for i in range(7)], "ls-3005": [f"3005_test{i}" for i in range(7)],
         "ls-2414": ["2414_test0", "2414_test1", "2414_test2"], "ls-367": ["367_enrol0"],
         "ls-1998": ["1998_test0", "1998_test1", "1998_test2"], "ls-3080": ["3080_enrol0"]}
N_CLIPS = sum(len(v) for v in CLIPS.values())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tools.train_tts import evaluate, featurise
    from tools.train_tts_corpus import Utt, vocoder_family
    tmp = tmp_path_factory.mktemp("tts-corpus")
    real = [Utt("real", spk, protocol_audio("ls-other-tel", n)) for spk, names in CLIPS.items() for n in names]
    fams = {name: vocoder_family(name, tmp, real) for name in ("lpc", "griffin-lim")}
    fs = featurise(real, fams, reps_real=2, reps_vocoded=1)
    report, shipped = evaluate(fs, train_kw={"epochs": 15}, log=lambda s: None)
    return tmp, fams, fs, report, shipped


def test_tiny_training_pipeline_runs_leave_one_family_out(tiny):
    tmp, fams, fs, report, shipped = tiny
    assert all(len(v) == N_CLIPS for v in fams.values())                # one resynthesis per real clip
    assert set(fs.role()) == {"TRAIN", "CAL", "TEST"}
    assert set(report["families"]) == {"lpc", "griffin-lim"}
    for r in report["families"].values():
        assert r["kind"] == "vocoder" and r["crops"] > 0
        assert 0.0 <= r["eer"] <= 1.0 and 0.0 <= r["detected"] <= 1.0
    sh = report["shipped"]
    assert 0.0 < sh["threshold"] < 1.0 and sh["test_crops"] > 0 and sh["cal_crops"] > 0
    # the shipped model learnt its training data: TRAIN speakers' vocoded crops score above
    # their real crops (what it does on unseen speakers and families is the benchmark's job)
    from tools.train_tts import crop_scores, normalised
    fsn = normalised(fs, shipped["params"]["cmn_prior"])
    role = fs.role()
    s_real = crop_scores(shipped["params"], fsn, np.flatnonzero(fs.real & (role == "TRAIN")))
    s_voc = crop_scores(shipped["params"], fsn, np.flatnonzero(~fs.real & (role == "TRAIN")))
    assert s_voc.mean() > s_real.mean() + 0.25, (s_voc.mean(), s_real.mean())


def test_tiny_weights_file_loads_into_the_runtime_detector(tiny, tmp_path):
    from engine.fraud import TtsDetector
    from tools.train_tts import write_weights
    _, fams, _, report, shipped = tiny
    path = tmp_path / "tiny.npz"
    write_weights(path, shipped, report, ["lpc", "griffin-lim"])
    det = TtsDetector.load(path)
    assert det.version.startswith("tts-frame-mlp-") and det.meta["families"] == ["lpc", "griffin-lim"]
    assert det.threshold == pytest.approx(shipped["threshold"])
    # live and training compute the same score: the runtime detector on a clip, fed in 200 ms
    # pieces, equals the trainer's crop score of the same audio through the same Platt scaling
    from engine.fraud.features import frame_features
    from tools.train_tts import FeatureSet, crop_scores, normalised
    for path in (protocol_audio("ls-other-tel", "1998_test0"), next(u.path for u in fams["lpc"] if u.speaker == "ls-1998")):
        x = read_audio(path)
        f = frame_features(x).astype(np.float32)
        one = FeatureSet(f, np.array([0]), np.array([len(f)]), np.array(["real"]), np.array(["ls-1998"]))
        z = crop_scores(shipped["params"], normalised(one, shipped["params"]["cmn_prior"]), np.array([0]))[0]
        r = det.score_pcm(x)
        assert r is not None and r.score == pytest.approx(det.probability(z), abs=2e-5)
        assert r.label == ("TTS_Detected" if r.score >= det.threshold else "No_TTS_Detected")

