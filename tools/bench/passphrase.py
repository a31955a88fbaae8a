"""Text-dependent verification benchmark, RSR2015-style, on the Free Spoken Digit Dataset.

    vbgw bench passphrase --speech $SPEECH/fsdd [--lengths 2-4] [--json out.json]

The protocol is built from FSDD (DIGIT_SPEAKER_INDEX.wav; each speaker says each digit 50
times): a passphrase is a sequence of digits, an utterance of it is the concatenation of one
recording of each digit with short pauses, passed through the telephony channel (8 kHz, level
-30..-22 dBFS, G.711 mu-law). Recordings 0-24 of each speaker and digit make enrolment
utterances, 25-49 test utterances, so no recording is in both. Each model is one speaker's
passphrase, registered with 3 utterances (like an Aculab register with Source1..3). Trials:

    TC   target speaker, right phrase (the genuine attempts)
    TW   target speaker, another of the protocol's phrases
    TW1  target speaker, the phrase with one digit changed (the hardest wrong phrase)
    IC   another speaker, right phrase

and the EER of TC against each non-target kind, and against IC+TW (RSR2015's combined), for
the voice alone (CAM++ llr of the speech-weighted mean of the 3 registration embeddings, the
product's one-shot path), the content alone (engine.passphrase DTW cost) and the text-dependent
score min(voice margin, content margin) (engine.passphrase.text_dependent_llr). Then the rates
at the product's operating point (verified <=> confidence >= 1.0, default profile thresholds).

The content calibration (cost -> llr, pass threshold at 2 % of wrong phrases accepted like the
voice's TRUE_LOW) is cross-validated by speaker: fitted on half the speakers, applied to the
other half, both ways, so the operating-point rates are on speakers the thresholds never saw.
`--write-calibration PATH` also fits it on all the trials (that is how
engine/data/calibration-passphrase.json was made).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NAME_RE = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
N_ENROL = 3


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--speech", type=Path, required=True,
                    help="FSDD directory (DIGIT_SPEAKER_INDEX.wav files), e.g. $SPEECH/fsdd")
    ap.add_argument("--lengths", default="2-4", help="digits per phrase, N or LO-HI (default 2-4)")
    ap.add_argument("--phrases", type=int, default=12, help="passphrases per speaker (default 12)")
    ap.add_argument("--tests", type=int, default=4, help="test utterances per speaker and phrase (default 4)")
    ap.add_argument("--tw", type=int, default=8, help="wrong-phrase (TW) trials per model (default 8)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--exclude", action="append",
                    help="leave a speaker out (repeatable; default: jason, whose 3-s FSDD clips cut most digits "
                         "at the clip's edges, so they are not whole words; --exclude none keeps everyone)")
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--scores", type=Path, help="also write every trial's scores (.npz) for analysis")
    ap.add_argument("--write-calibration", type=Path,
                    help="also fit the content calibration on all the protocol's trials and write it here "
                         "(engine/data/calibration-passphrase.json ships one)")


# ----------------------------------------------------------------------------- protocol
@dataclass
class Utterance:
    key: tuple                 # (speaker, phrase, role, k)
    speaker: str
    phrase: str
    pcm: np.ndarray | None = None


@dataclass
class TdProtocol:
    """Models (speaker, phrase) with N_ENROL registration utterances, test utterances, trials."""
    enrol: dict[tuple[str, str], list[Utterance]] = field(default_factory=dict)
    tests: dict[tuple, Utterance] = field(default_factory=dict)
    trials: list[tuple[tuple[str, str], tuple, str]] = field(default_factory=list)   # model, test key, kind


def parse_lengths(s: str) -> tuple[int, int]:
    lo, _, hi = s.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 1 <= lo_i <= hi_i <= 8:
        raise SystemExit(f"--lengths {s!r}: want N or LO-HI with 1 <= LO <= HI <= 8")
    return lo_i, hi_i


def index_fsdd(root: Path) -> dict[str, dict[str, dict[int, Path]]]:
    """speaker -> digit -> index -> path."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for p in sorted(root.glob("*.wav")):
        m = NAME_RE.match(p.name)
        if m:
            out[m.group(2)][m.group(1)][int(m.group(3))] = p
    if not out:
        raise SystemExit(f"no FSDD files (DIGIT_SPEAKER_INDEX.wav) in {root}")
    return out


def make_phrases(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[str]:
    """n distinct digit strings of lo..hi digits, no digit twice in a row."""
    out: list[str] = []
    limit = sum(10 * 9 ** (k - 1) for k in range(lo, hi + 1))
    while len(out) < min(n, limit):
        k = int(rng.integers(lo, hi + 1))
        d = [int(rng.integers(10))]
        while len(d) < k:
            x = int(rng.integers(10))
            if x != d[-1]:
                d.append(x)
        s = "".join(map(str, d))
        if s not in out:
            out.append(s)
    return out


def near_phrase(rng: np.random.Generator, phrase: str, avoid: list[str]) -> str:
    """The phrase with one digit replaced (not by a neighbour's digit), not one of `avoid`
    (single digits: any other digit, which then is also a TW phrase)."""
    avoid = avoid if len(phrase) > 1 else []
    for _ in range(1000):
        i = int(rng.integers(len(phrase)))
        nb = {phrase[i]} | ({phrase[i - 1]} if i else set()) | ({phrase[i + 1]} if i + 1 < len(phrase) else set())
        x = str(int(rng.integers(10)))
        s = phrase[:i] + x + phrase[i + 1:]
        if x not in nb and s not in avoid:
            return s
    raise RuntimeError(f"no near phrase for {phrase}")


class _Draw:
    """Recordings of one speaker and digit from an index range, without replacement, refilled
    (reshuffled) when used up."""

    def __init__(self, rng: np.random.Generator, files: dict[int, Path], idx: range):
        self.rng, self.pool, self.left = rng, [files[i] for i in idx if i in files], []

    def __call__(self) -> Path:
        if not self.left:
            self.left = list(self.rng.permutation(len(self.pool)))
        return self.pool[self.left.pop()]


def telephony(parts: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Digits joined with 50-300 ms pauses (and 200-500 ms around), low background noise,
    level -30..-22 dBFS, G.711 mu-law. int16 8 kHz."""
    from tools.train_tts_corpus import ulaw_roundtrip

    def pause(lo, hi):
        return np.zeros(int(rng.uniform(lo, hi) * 8000))
    seq = [pause(0.2, 0.5)]
    for i, p in enumerate(parts):
        if i:
            seq.append(pause(0.05, 0.3))
        seq.append(p.astype(np.float64) / 32768.0)
    seq.append(pause(0.2, 0.5))
    x = np.concatenate(seq)
    x = x - x.mean()
    x = x * (10 ** (rng.uniform(-30, -22) / 20) / (np.sqrt(np.mean(x * x)) + 1e-12))
    x = x + rng.standard_normal(len(x)) * 10 ** (-65 / 20)
    y = ulaw_roundtrip(np.clip(x, -1, 1))
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def trimmed(engine, pcm: np.ndarray) -> np.ndarray | None:
    """A digit recording cut to its longest VAD speech run (+-1 chunk): some FSDD speakers'
    files carry seconds of room noise and a second sound (a click, a breath) around the word,
    which a caller's passphrase would not. None when the VAD finds no speech (a few files are
    truncated clicks)."""
    from engine.vad import CHUNK
    sp = np.concatenate([[False], engine.vad_speech(pcm), [False]]).astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(sp) == 1), np.flatnonzero(np.diff(sp) == -1)
    if not len(starts):
        return None
    k = int(np.argmax(ends - starts))
    return pcm[max(starts[k] - 1, 0) * CHUNK:(ends[k] + 1) * CHUNK]


def build_protocol(engine, fsdd: dict, lengths: tuple[int, int], n_phrases: int, n_tests: int, n_tw: int,
                   seed: int, enrol_idx: range, test_idx: range) -> TdProtocol:
    from tools.protocol import read_audio
    rng = np.random.default_rng(seed)
    speakers = sorted(fsdd)
    phrases = make_phrases(rng, n_phrases, *lengths)
    near = {p: near_phrase(rng, p, phrases) for p in phrases}
    audio: dict[Path, np.ndarray] = {}
    for spk in speakers:
        for d in fsdd[spk]:
            for i in list(enrol_idx) + list(test_idx):
                p = fsdd[spk][d].get(i)
                t = trimmed(engine, read_audio(p)) if p is not None else None
                if t is not None:
                    audio[p] = t
    proto = TdProtocol()
    for spk in speakers:
        usable = {d: {i: p for i, p in fsdd[spk][d].items() if p in audio} for d in fsdd[spk]}
        enrol = {d: _Draw(rng, usable[d], enrol_idx) for d in usable}
        test = {d: _Draw(rng, usable[d], test_idx) for d in usable}

        def utt(draw, phrase, key):
            return Utterance(key, spk, phrase, telephony([audio[draw[d]()] for d in phrase], rng))
        for ph in phrases:
            proto.enrol[(spk, ph)] = [utt(enrol, ph, (spk, ph, "enrol", k)) for k in range(N_ENROL)]
            for k in range(n_tests):
                proto.tests[(spk, ph, "test", k)] = utt(test, ph, (spk, ph, "test", k))
                proto.tests[(spk, near[ph], "near", k)] = utt(test, near[ph], (spk, near[ph], "near", k))
    for spk in speakers:
        for ph in phrases:
            model = (spk, ph)
            for k in range(n_tests):
                proto.trials.append((model, (spk, ph, "test", k), "TC"))
                proto.trials.append((model, (spk, near[ph], "near", k), "TW1"))
                for other in speakers:
                    if other != spk:
                        proto.trials.append((model, (other, ph, "test", k), "IC"))
            wrong = [(spk, q, "test", k) for q in phrases if q != ph for k in range(n_tests)]
            for j in rng.choice(len(wrong), size=min(n_tw, len(wrong)), replace=False):
                proto.trials.append((model, wrong[int(j)], "TW"))
    return proto


# ----------------------------------------------------------------------------- scoring
@dataclass
class Scored:
    kind: np.ndarray           # "TC" | "TW" | "TW1" | "IC" per trial
    speaker: np.ndarray        # the model's (claimed) speaker
    voice_llr: np.ndarray      # nan where the voice could not be scored (< 0.5 s speech)
    content_cost: np.ndarray   # inf where the attempt has no phrase or cannot align

    def subset(self, mask: np.ndarray) -> "Scored":
        return Scored(self.kind[mask], self.speaker[mask], self.voice_llr[mask], self.content_cost[mask])


def score(engine, proto: TdProtocol) -> tuple[Scored, dict]:
    """Voice: the product's one-shot path (embed_many_sync), registration = speech-weighted
    mean of the accepted (>= 0.5 s speech) sources. Content: engine.passphrase, the models
    round-tripped through their stored form (float16 blob)."""
    from engine import passphrase as pp
    from tools.protocol import NO_DATA_MS
    t0 = time.monotonic()
    enrol_utts = [u for us in proto.enrol.values() for u in us]
    test_utts = list(proto.tests.values())
    embs = engine.embed_many_sync([u.pcm for u in enrol_utts + test_utts])
    emb = {u.key: e for u, e in zip(enrol_utts + test_utts, embs)}
    t_voice = time.monotonic() - t0
    voiceprint, models = {}, {}
    for m, us in proto.enrol.items():
        acc = [emb[u.key] for u in us if emb[u.key] is not None and emb[u.key].speech_ms >= NO_DATA_MS]
        if acc:
            v = acc[0]
            for e in acc[1:]:
                v = engine.merge(v.vector, v.speech_ms, e)
            voiceprint[m] = v
        model = pp.PassphraseModel()
        for u in us:
            f = engine.phrase_features(u.pcm)
            if f is not None:
                model.add(f)
        models[m] = pp.PassphraseModel.from_bytes(model.to_bytes())
    t1 = time.monotonic()
    feats = {k: engine.phrase_features(u.pcm) for k, u in proto.tests.items()}
    kinds, spk, vl, cc = [], [], [], []
    for m, tk, kind in proto.trials:
        e, vp = emb[tk], voiceprint.get(m)
        ok = e is not None and vp is not None and e.speech_ms >= NO_DATA_MS
        vl.append(engine.score(e, vp.vector).llr if ok else math.nan)
        f = feats[tk]
        cc.append(models[m].cost(f)[0] if f is not None and models[m].templates else math.inf)
        kinds.append(kind)
        spk.append(m[0])
    t_content = time.monotonic() - t1
    sizes = [len(mm.to_bytes()) for mm in models.values()]
    speech_s = [len(t) * pp.SHIFT_MS / 1000 for mm in models.values() for t in mm.templates]
    info = {"voice_s": round(t_voice, 1), "content_s": round(t_content, 1),
            "content_ms_per_trial": round(1000 * t_content / max(len(proto.trials), 1), 2),
            "model_bytes_mean": int(np.mean(sizes)), "template_speech_s_mean": round(float(np.mean(speech_s)), 2),
            "test_speech_ms_median": int(np.median([e.speech_ms for e in embs[len(enrol_utts):] if e is not None]))}
    return Scored(np.array(kinds), np.array(spk), np.array(vl), np.array(cc)), info


# ----------------------------------------------------------------------------- calibration
def _logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[float, float]:
    """llr = a * x + b by weighted logistic regression at equal class priors, on standardised x
    with a small ridge (the content classes are nearly separable for clean speakers: an
    unregularised fit runs off to an infinite slope)."""
    from scipy.optimize import minimize
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    z = (x - mu) / sd
    w = np.where(y > 0, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))

    def loss(t):
        s = t[0] * z + t[1]
        return float(np.sum(w * np.logaddexp(0.0, -np.where(y > 0, s, -s)))) + ridge * t[0] ** 2
    t = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}).x
    return float(t[0] / sd), float(t[1] - t[0] * mu / sd)


def fit_calibration(sc: Scored, far_pass: float, far_high: float) -> dict:
    """Cost -> content llr on TC (same phrase) vs TW+TW1 (another phrase, same speaker); the
    content thresholds are where far_pass / far_high of the wrong-phrase (TW) attempts pass, the
    twins of the voice's far_low (TRUE_LOW, 2 %) and far_high (TRUE_HIGH, 0.05 %), from the
    same tail table as the voice calibration (engine.calibration.tail_quantiles: empirical,
    probit-extrapolated past the last 5 trials). TW1 (one digit changed) is not in the
    thresholds: a caller who gets one digit of a long phrase wrong is not an attacker."""
    from engine.calibration import tail_quantiles
    from engine.passphrase import FEATURE_ID
    tgt = sc.kind == "TC"
    non = np.isin(sc.kind, ["TW", "TW1"])
    keep = (tgt | non) & np.isfinite(sc.content_cost)
    a, b = _logistic(sc.content_cost[keep], tgt[keep].astype(float))
    tw = sc.kind == "TW"
    llr_tw = a * np.where(np.isfinite(sc.content_cost[tw]), sc.content_cost[tw], 2.0) + b
    table = dict((p, q) for p, q in tail_quantiles(llr_tw, upper=True))
    return {"id": f"passphrase-{FEATURE_ID}-fsdd", "feature_id": FEATURE_ID, "a": a, "b": b,
            "pass_llr": table[far_pass], "high_llr": table[far_high],
            "far_pass": far_pass, "far_high": far_high,
            "fitted_on": "vbgw bench passphrase: FSDD digit phrases of 2-4 digits, 6 speakers, registered "
                         "with recordings 0-24, attempts from recordings 25-49: same speaker, same phrase (TC) "
                         "vs another phrase (TW) and one digit changed (TW1); thresholds on TW",
            "trials": {"TC": int((tgt & keep).sum()), "TW": int((tw & keep).sum()),
                       "TW1": int(((sc.kind == "TW1") & keep).sum())}}


def content_margin(sc: Scored, cal) -> np.ndarray:
    """(content llr - pass) / span per trial; unscorable content is the worst cost (2.0)."""
    cost = np.where(np.isfinite(sc.content_cost), sc.content_cost, 2.0)
    return (cal.a * cost + cal.b - cal.pass_llr) / max(cal.high_llr - cal.pass_llr, 1e-6)


def cross_validated_margins(sc: Scored, far_pass: float, far_high: float) -> np.ndarray:
    """Content margins with the calibration fitted on the other half of the speakers (two
    folds by speaker): the operating point is measured on speakers the thresholds never saw."""
    from engine.passphrase import ContentCalibration
    speakers = sorted(set(sc.speaker))
    out = np.zeros(len(sc.kind))
    for fold in (0, 1):
        held = np.isin(sc.speaker, speakers[fold::2])
        d = fit_calibration(sc.subset(~held), far_pass, far_high)
        cal = ContentCalibration(d["id"], d["a"], d["b"], d["pass_llr"], d["high_llr"])
        out[held] = content_margin(sc.subset(held), cal)
    return out


# ----------------------------------------------------------------------------- report
def _eer(pos: np.ndarray, neg: np.ndarray) -> float:
    from tools.metrics import eer
    return float(eer(np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])))


def report(sc: Scored, cmargin: np.ndarray, thresholds: dict, span_min: float) -> dict:
    """EERs per condition for voice, content and the text-dependent score, and the rates at
    the product's operating point. The text-dependent score is min(voice margin, content
    margin) (engine.passphrase.text_dependent_llr on the margin scale)."""
    vpass, vhigh = thresholds["TRUE_LOW"], thresholds["TRUE_HIGH"]
    vmargin = (sc.voice_llr - vpass) / max(vhigh - vpass, span_min)
    ok = np.isfinite(sc.voice_llr)
    td = np.minimum(vmargin, cmargin)
    systems = {"voice only": vmargin, "content only": -np.where(np.isfinite(sc.content_cost), sc.content_cost, 2.0),
               "text-dependent (voice AND content)": td}
    conds = {"impostor (TC vs IC)": ["IC"], "wrong phrase (TC vs TW)": ["TW"],
             "one digit changed (TC vs TW1)": ["TW1"], "combined (TC vs IC+TW)": ["IC", "TW"]}
    kinds = ("TC", "TW", "TW1", "IC")
    out: dict = {"trials": {k: int((sc.kind == k).sum()) for k in kinds},
                 "voice_not_scored": {k: int(((sc.kind == k) & ~ok).sum()) for k in kinds},
                 "eer": {}, "operating_point": {}}
    for name, s in systems.items():
        pos = s[(sc.kind == "TC") & ok]
        out["eer"][name] = {c: round(100 * _eer(pos, s[np.isin(sc.kind, ks) & ok]), 2) for c, ks in conds.items()}
    for name, s in (("voice only", vmargin), ("text-dependent", td)):
        acc = {k: 100 * float(np.mean(s[(sc.kind == k) & ok] >= 0)) for k in kinds}
        out["operating_point"][name] = {"FRR (TC)": round(100 - acc["TC"], 2),
                                        **{k: round(acc[k], 2) for k in ("TW", "TW1", "IC")}}
    return out


def print_report(title: str, out: dict, info: dict) -> None:
    print(f"\n## {title}")
    print(f"trials: {out['trials']}; voice not scored (< 0.5 s speech): {out['voice_not_scored']}")
    print(f"timing/size: {info}")
    conds = list(next(iter(out["eer"].values())))
    print("| system | " + " | ".join(conds) + " |")
    print("|---|" + "---|" * len(conds))
    for name, row in out["eer"].items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.2f} %" for c in conds) + " |")
    print("\noperating point (verified <=> confidence >= 1.0; default profile thresholds; content "
          "thresholds cross-validated by speaker): FRR on TC, acceptance (FAR) per non-target kind:")
    for name, row in out["operating_point"].items():
        print(f"  {name}: FRR {row['FRR (TC)']:.2f} %, FAR TW {row['TW']:.2f} %, TW1 {row['TW1']:.2f} %, "
              f"IC {row['IC']:.2f} %")


def main(args: argparse.Namespace) -> int:
    from engine import BandTargets, Engine, EngineConfig
    from gateway.services.aculab import MIN_CONFIDENCE_SPAN
    lengths = parse_lengths(args.lengths)
    fsdd = index_fsdd(args.speech)
    excluded = [x for x in (args.exclude or ["jason"]) if x != "none"]
    fsdd = {k: v for k, v in fsdd.items() if k not in excluded}
    if len(fsdd) < 4:
        raise SystemExit(f"need at least 4 speakers, have {sorted(fsdd)}")
    engine = Engine.load(EngineConfig(model_dir=args.model_dir) if args.model_dir else EngineConfig())
    th = engine.thresholds(BandTargets())
    t0 = time.monotonic()
    proto = build_protocol(engine, fsdd, lengths, args.phrases, args.tests, args.tw, args.seed, range(0, 25), range(25, 50))
    print(f"protocol: {len(fsdd)} speakers, {len(proto.enrol)} models ({N_ENROL} registration utterances each), "
          f"{len(proto.tests)} test utterances, {len(proto.trials)} trials; phrases of {args.lengths} digits; "
          f"built in {time.monotonic() - t0:.1f} s", flush=True)
    sc, info = score(engine, proto)
    far_pass, far_high = BandTargets().far_low, BandTargets().far_high
    out = report(sc, cross_validated_margins(sc, far_pass, far_high), th, MIN_CONFIDENCE_SPAN)
    result = {"lengths": args.lengths, "seed": args.seed, "excluded": excluded, **out, "info": info,
              "voice_thresholds": {"pass": th["TRUE_LOW"], "high": th["TRUE_HIGH"]}}
    print_report(f"passphrases of {args.lengths} digits", out, info)
    if args.write_calibration:
        d = fit_calibration(sc, far_pass, far_high)
        args.write_calibration.write_text(json.dumps(d, indent=2) + "\n")
        print(f"\ncontent calibration (all speakers) written to {args.write_calibration}: a={d['a']:.3f} "
              f"b={d['b']:.3f} pass_llr={d['pass_llr']:.3f} high_llr={d['high_llr']:.3f} ({d['trials']})")
        result["calibration"] = d
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.scores:
        np.savez(args.scores, kind=sc.kind, speaker=sc.speaker, voice_llr=sc.voice_llr,
                 content_cost=sc.content_cost)
    print(f"\n{time.monotonic() - t0:.1f} s")
    return 0
