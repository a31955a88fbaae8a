"""Fraud-signal benchmarks on the dev protocols (figures in docs/benchmarks.md, "Fraud signals").

    vbgw bench blocklist        lists made of some speakers; calls (test files) from listed
                                and unlisted speakers: miss and false-match rates per threshold
    vbgw bench replay           fingerprints of enrolment and earlier verification audio; replays
                                (re-encoded, gain, shift, trim, noise, loudspeaker+room) and
                                fresh genuine audio: detection and false-positive rates
    vbgw bench speaker-change   live engine sessions of one speaker, and of speaker A then B:
                                false alarms, misses, speech from the change to the flag
    vbgw bench tts              synthetic speech: leave-one-generator-family-out EER and detection,
                                false alarms on unseen speakers, CPU per second of audio

Every bench goes through the product code: engine sessions / embed_many_sync, the gateway's
blocklist_results(), engine.fraud fingerprints, match() and pad_detected()."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

# The protocols docs/benchmarks.md's figures were measured on ("Data" there says what they are).
MEASURED_PROTOCOLS = ["fsdd-tel", "fsdd-tel2s", "ls-other-tel", "ls-other-tel2s"]


def _protocols(args) -> list:
    from tools.protocol import Protocol
    return [Protocol.read(p) for p in args.protocol]


def _engine(args):
    from engine import Engine, EngineConfig
    return Engine.load(EngineConfig(model_dir=args.model_dir) if args.model_dir else EngineConfig())


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--protocol", action="append", type=Path, required=True, metavar="DIR",
                    help="a trial protocol directory (repeatable; docs/benchmarks.md's figures used "
                         f"{', '.join(MEASURED_PROTOCOLS)}; tests/data/protocols has small cuts of them)")
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


# ----------------------------------------------------------------------------- blocklist
def blocklist_args(ap: argparse.ArgumentParser) -> None:
    _common(ap)
    ap.add_argument("--splits", type=int, default=10, help="random listed/unlisted speaker splits per protocol")
    ap.add_argument("--far", type=float, action="append",
                    help="per-entry false-match targets to report (default 0.0005 0.001 0.005 0.01)")


def blocklist_main(args) -> int:
    from gateway.services.blocklists import MATCH
    from gateway.services.fraud import blocklist_results
    from gateway.store.base import Blocklist, BlocklistEntry
    fars = args.far or [0.0005, 0.001, 0.005, 0.01]
    eng = _engine(args)
    rng = np.random.default_rng(args.seed)
    out = {"protocols": {}, "fars": fars}
    t0 = time.time()
    for proto in _protocols(args):
        enr = dict(zip([m for m, _, _ in proto.enrol], eng.embed_many_sync([proto.audio(p) for _, _, p in proto.enrol])))
        tst = dict(zip([t for t, _, _ in proto.test], eng.embed_many_sync([proto.audio(p) for _, _, p in proto.test])))
        speakers = sorted({s for _, s, _ in proto.enrol})
        counts = {f: {"listed_calls": 0, "misses": 0, "unlisted_calls": 0, "false_matches": 0} for f in fars}
        for _ in range(args.splits):
            listed = set(rng.choice(speakers, len(speakers) // 2, replace=False))
            entries = [BlocklistEntry(i, "bl", m, "wav", enr[m].vector.astype(np.float32).tobytes(),
                                      enr[m].speech_ms, enr[m].model, 0)
                       for i, (m, s, _) in enumerate(proto.enrol) if s in listed and enr.get(m) is not None]
            bl = Blocklist("bl", "t", "g", "bench", "", "HIGH_RISK", "blocklisted", "Blocklisted voice", True, 0, 0)
            for far in fars:
                thr = float(eng.calibration.thr_far(far))
                c = counts[far]
                for t, s, _ in proto.test:
                    e = tst.get(t)
                    if e is None or e.speech_ms < 500:
                        continue          # NO_DATA: no check is made
                    hit = blocklist_results(eng, e, [(bl, entries)], thr)[0].label == MATCH
                    if s in listed:
                        c["listed_calls"] += 1
                        c["misses"] += int(not hit)
                    else:
                        c["unlisted_calls"] += 1
                        c["false_matches"] += int(hit)
        n_entries = sum(1 for _, s, _ in proto.enrol) // 2
        out["protocols"][proto.name] = {"speakers": len(speakers), "entries_per_list": n_entries,
                                        "by_far": {str(f): c for f, c in counts.items()}}
        print(f"{proto.name}: {len(speakers)} speakers, ~{n_entries} entries per list, {args.splits} splits")
        for f, c in counts.items():
            print(f"  per-entry FAR target {f:<7g} thr llr {float(eng.calibration.thr_far(f)):6.2f}  "
                  f"miss {_pct(c['misses'] / max(c['listed_calls'], 1)):>8} ({c['misses']}/{c['listed_calls']})  "
                  f"false match {_pct(c['false_matches'] / max(c['unlisted_calls'], 1)):>8} "
                  f"({c['false_matches']}/{c['unlisted_calls']})")
    out["seconds"] = round(time.time() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


# ----------------------------------------------------------------------------- replay
def replay_args(ap: argparse.ArgumentParser) -> None:
    _common(ap)
    ap.add_argument("--stored", type=int, action="append", metavar="N",
                    help="stored fingerprints per user for the check's CPU cost (default: 150 and 1000)")


def _check_cost(test_fps: list, stored_counts: list[int], rng) -> dict:
    """CPU of one PAD check of a call against a user's N stored fingerprints: every row
    unpacked and matched one by one (the check before the cache) against one match of the
    cached index (gateway/services/stored_prints.py), with identical answers; and the index's
    one-off build and memory. A "call" is 8 of the protocol's test files one after another
    (~32 s of speech on ls-other-tel), stored calls and checked calls alike."""
    from engine.fraud import match, pack, unpack
    from engine.fraud.fingerprint import FingerprintIndex

    def call() -> tuple[np.ndarray, np.ndarray]:
        parts, t0 = [], 0
        for i in rng.choice(len(test_fps), 8, replace=False):
            h, t = test_fps[int(i)]
            parts.append((h, t + np.uint32(t0)))
            t0 += int(t.max()) + 50 if len(t) else 0
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    blobs = [pack(*call()) for _ in range(60)]
    queries = [call() for _ in range(5)]
    out: dict = {}
    for n in stored_counts:
        rows = [blobs[i % len(blobs)] for i in range(n)]
        t0 = time.process_time()
        index = FingerprintIndex([unpack(b) for b in rows])
        build = time.process_time() - t0
        per_row = cached = 0.0
        for q in queries:
            t0 = time.process_time()
            one_by_one = [match(q, unpack(b)) for b in rows]
            per_row += time.process_time() - t0
            t0 = time.process_time()
            many = index.match_many(q)
            cached += time.process_time() - t0
            if many != one_by_one:
                raise AssertionError("the index answered differently from matching each row")
        out[str(n)] = {"per_row_ms": round(1000 * per_row / len(queries), 2),
                       "index_ms": round(1000 * cached / len(queries), 2),
                       "index_build_ms": round(1000 * build, 1), "index_mb": round(index.nbytes() / 2 ** 20, 2),
                       "stored_hashes": index.entries, "query_hashes_mean": int(np.mean([len(q[0]) for q in queries]))}
    out["tone"] = _tone_cost()
    return out


def _tone_cost(seconds: float = 60.0) -> dict:
    """The case speech never reaches: a tone (a few hashes repeated at every frame) against a
    stored copy of itself: its hash pairs, its distinctive landmarks (none: it no longer pairs
    at all), CPU and peak memory (tracemalloc) of one check."""
    import tracemalloc

    from engine.fraud import fingerprint, match
    from engine.fraud.fingerprint import distinctive
    t = np.arange(int(seconds * 8000)) / 8000
    stored = fingerprint((np.sin(2 * np.pi * 1000 * t) * 8000).astype(np.int16))
    call = fingerprint((np.sin(2 * np.pi * 1000 * t + 1.0) * 4000).astype(np.int16))
    pairs = sum(int(np.count_nonzero(stored[0] == h)) * int(np.count_nonzero(call[0] == h))
                for h in np.unique(call[0]))
    tracemalloc.start()
    t0 = time.process_time()
    m = match(call, stored)
    cpu = time.process_time() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": seconds, "pairs": pairs, "hashes": len(call[0]), "distinctive": len(distinctive(*call)[0]),
            "cpu_s": round(cpu, 2), "peak_mb": round(peak / 2 ** 20), "is_match": m.is_match}


def _to_i16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _codec(x: np.ndarray, law: str) -> np.ndarray:
    from connectors import codecs as cc      # its audioop import covers Python 3.13 too
    from connectors.codecs import decode
    b = np.asarray(x, "<i2").tobytes()
    enc = cc.audioop.lin2ulaw(b, 2) if law == "mulaw" else cc.audioop.lin2alaw(b, 2)
    return decode(enc, law).astype(np.int16)


def _noise(x: np.ndarray, snr_db: float, rng) -> np.ndarray:
    r = np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9
    return x.astype(np.float64) + rng.standard_normal(len(x)) * r / 10 ** (snr_db / 20)


def _loudspeaker_room(x: np.ndarray, rng) -> np.ndarray:
    """A recording played on a phone loudspeaker into another phone: band-limited, resonant,
    a short room response, noise, resampled 8 -> 16 -> 8 kHz, mu-law again."""
    from scipy.signal import butter, lfilter, resample_poly
    y = x.astype(np.float64)
    b, a = butter(2, [350 / 4000, 3300 / 4000], "band")
    y = lfilter(b, a, y)
    # a mild resonance (small speaker box) around 1-2 kHz
    f0 = rng.uniform(1000, 2000) / 8000
    r = 0.9
    y = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * f0), r * r], y) * (1 - r)
    ir = np.exp(-np.arange(int(0.08 * 8000)) / (0.02 * 8000)) * rng.standard_normal(int(0.08 * 8000))
    ir[0] = 1.0
    y = np.convolve(y, ir * 0.3)[: len(y)]
    y = resample_poly(resample_poly(y, 2, 1), 1, 2)
    y = _noise(y, 25, rng)
    y = y * (10 ** (-26 / 20) * 32768 / (np.sqrt(np.mean(y * y)) + 1e-9))
    return _codec(_to_i16(y), "mulaw")


TRANSFORMS = {
    "same audio, A-law re-encode": lambda x, rng: _codec(x, "alaw"),
    "gain -12 dB + mu-law": lambda x, rng: _codec(_to_i16(x * 0.25), "mulaw"),
    "gain +6 dB (clipping) + shift 3 ms": lambda x, rng: _to_i16(np.concatenate([np.zeros(24), x * 2.0])),
    "crop only (no other change)": None,         # every case is a crop at a random point
    "noise 20 dB SNR": lambda x, rng: _to_i16(_noise(x, 20, rng)),
    "noise 10 dB SNR": lambda x, rng: _to_i16(_noise(x, 10, rng)),
    "loudspeaker + room + 25 dB noise": _loudspeaker_room,
}


def replay_main(args) -> int:
    from engine.fraud import fingerprint, match, pad_detected
    rng = np.random.default_rng(args.seed)
    names = args.protocol or ["fsdd-tel", "ls-other-tel"]
    args.protocol = names
    out: dict = {"protocols": {}}
    for proto in _protocols(args):
        enrol_fp = {m: (s, fingerprint(proto.audio(p))) for m, s, p in proto.enrol}
        test_audio = {t: (s, proto.audio(p)) for t, s, p in proto.test}
        test_fp = {t: fingerprint(a) for t, (s, a) in test_audio.items()}
        by_spk_enrol: dict[str, list] = {}
        for m, (s, fp) in enrol_fp.items():
            by_spk_enrol.setdefault(s, []).append(("ENROL", fp))
        by_spk_test: dict[str, list] = {}
        for t, (s, _) in test_audio.items():
            by_spk_test.setdefault(s, []).append((t, test_fp[t]))

        def stored_for(spk: str, exclude_test: str | None = None) -> list:
            # a user's fingerprints: enrolment audio + earlier verification calls
            return by_spk_enrol.get(spk, []) + [("VERIFY", fp) for t, fp in by_spk_test.get(spk, [])
                                                if t != exclude_test]

        def crop(x: np.ndarray, secs: float = 4.0) -> np.ndarray:
            n = int(secs * 8000)
            if len(x) <= n:
                return x
            start = int(rng.integers(0, len(x) - n))
            return x[start:start + n]

        res: dict = {"type_b": {}, "type_a": {}}
        # Type B: enrolment audio replayed
        for name, fn in TRANSFORMS.items():
            det = tot = other = 0
            for m, s, p in proto.enrol:
                x = crop(proto.audio(p))
                y = fn(x, rng) if fn is not None else x
                found = pad_detected([(k, match(fingerprint(y), fp)) for k, fp in stored_for(s)])
                tot += 1
                det += int(found == {"type": "TypeB"})
                other += int(found is not None and found != {"type": "TypeB"})
            res["type_b"][name] = {"detected": det, "total": tot, "other_type": other}
        # Type A: an earlier verification call's audio played again
        for name, fn in TRANSFORMS.items():
            det = tot = 0
            for t, (s, a) in list(test_audio.items()):
                x = crop(a, 3.0)
                y = fn(x, rng) if fn is not None else x
                found = pad_detected([(k, match(fingerprint(y), fp)) for k, fp in stored_for(s)])
                tot += 1
                det += int(found == {"type": "TypeA"})
            res["type_a"][name] = {"detected": det, "total": tot}
        # False positives: fresh genuine audio of the same speaker (each test file against the
        # speaker's enrolment and all their *other* test files), and against every other speaker.
        fp_same = fp_other = n_same = n_other = 0
        for t, (s, a) in test_audio.items():
            q = test_fp[t]
            n_same += 1
            fp_same += int(pad_detected([(k, match(q, fp)) for k, fp in stored_for(s, exclude_test=t)]) is not None)
            for s2 in by_spk_enrol:
                if s2 == s:
                    continue
                n_other += 1
                fp_other += int(pad_detected([(k, match(q, fp)) for k, fp in stored_for(s2)]) is not None)
        res["false_positive"] = {"same_speaker": [fp_same, n_same], "other_speakers": [fp_other, n_other]}
        res["check_cost"] = _check_cost(list(test_fp.values()), args.stored or [150, 1000], rng)
        out["protocols"][proto.name] = res
        print(f"{proto.name}:")
        print("  Type B (enrolment audio replayed), 4 s crops:")
        for name, r in res["type_b"].items():
            print(f"    {name:38s} {_pct(r['detected'] / r['total']):>8} ({r['detected']}/{r['total']})")
        print("  Type A (earlier verification audio again), 3 s crops:")
        for name, r in res["type_a"].items():
            print(f"    {name:38s} {_pct(r['detected'] / r['total']):>8} ({r['detected']}/{r['total']})")
        print(f"  false positives, fresh audio vs the same speaker's fingerprints: "
              f"{_pct(fp_same / max(n_same, 1))} ({fp_same}/{n_same}); vs other users': "
              f"{_pct(fp_other / max(n_other, 1))} ({fp_other}/{n_other})")
        print("  CPU of one PAD check (a ~32 s call against N stored calls), identical answers:")
        for n, c in res["check_cost"].items():
            if n == "tone":
                print(f"    a {c['seconds']:g} s tone against its stored copy ({c['pairs']:,} hash pairs of "
                      f"{c['hashes']} hashes, {c['distinctive']} distinctive): {c['cpu_s']} CPU s, peak "
                      f"{c['peak_mb']} MB, match {c['is_match']}")
                continue
            print(f"    N={n:>5}: each row unpacked and matched {c['per_row_ms']:8.2f} ms; cached index "
                  f"{c['index_ms']:7.2f} ms (built once in {c['index_build_ms']} ms, {c['index_mb']} MB, "
                  f"{c['stored_hashes']} hashes; query {c['query_hashes_mean']} hashes)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


# ----------------------------------------------------------------------------- speaker change
def scd_args(ap: argparse.ArgumentParser) -> None:
    _common(ap)
    ap.add_argument("--pairs", type=int, default=60, help="two-speaker calls per protocol")
    ap.add_argument("--concurrency", type=int, default=12)


async def _run_call(eng, parts: list[np.ndarray]) -> dict:
    """One live engine session: push the parts in 200 ms frames; returns the speech at each
    part boundary and, per milestone, (speech_ms, user_changed, scd_llr)."""
    from engine.types import Milestone, SpeechLimits
    marks: list = []
    sess = eng.open_session("bench", SpeechLimits(), lambda ev: marks.append(
        (ev.embedding.speech_ms, ev.speaker_change.user_changed, ev.speaker_change.scd_llr))
        if isinstance(ev, Milestone) else None)
    bounds = []
    for x in parts:
        for i in range(0, len(x), 1600):
            sess.push("customer", x[i:i + 1600])
            await asyncio.sleep(0)
        await sess.flush()
        bounds.append(sess.speech_ms)
    await asyncio.sleep(0.05)
    final = sess.speaker_change
    await sess.close()
    return {"bounds": bounds, "marks": marks, "final": (final.user_changed, final.scd_llr)}


def scd_main(args) -> int:
    names = args.protocol or ["fsdd-tel", "ls-other-tel"]
    args.protocol = names
    eng = _engine(args)
    rng = np.random.default_rng(args.seed)

    async def run() -> dict:
        await eng.start()
        res: dict = {}
        try:
            for proto in _protocols(args):
                files: dict[str, list[np.ndarray]] = {}
                for _, s, p in proto.enrol:
                    files.setdefault(s, []).append(proto.audio(p))
                spk = sorted(files)
                one = [[np.concatenate(files[s])] for s in spk if len(files[s]) >= 2]
                two = []
                for _ in range(args.pairs):
                    a, b = rng.choice(spk, 2, replace=False)
                    first = files[a][int(rng.integers(len(files[a])))]
                    second = np.concatenate([files[b][i] for i in rng.permutation(len(files[b]))[:2]])
                    two.append([first, second])
                sem = asyncio.Semaphore(args.concurrency)

                async def guarded(parts):
                    async with sem:
                        return await _run_call(eng, parts)
                r_one = await asyncio.gather(*(guarded(p) for p in one))
                r_two = await asyncio.gather(*(guarded(p) for p in two))
                fa = sum(1 for r in r_one if r["final"][0])
                min_llr_one = min((r["final"][1] for r in r_one if r["final"][1] is not None), default=None)
                flagged, delays, before = 0, [], 0
                for r in r_two:
                    change_at = r["bounds"][0]
                    hits = [ms for ms, changed, _ in r["marks"] if changed]
                    if r["final"][0]:
                        flagged += 1
                        if hits:
                            if hits[0] < change_at:
                                before += 1
                            delays.append((hits[0] - change_at) / 1000)
                d = np.array(delays) if delays else np.zeros(0)
                res[proto.name] = {
                    "one_speaker_calls": len(r_one), "false_alarms": fa,
                    "min_one_speaker_scd_llr": min_llr_one,
                    "two_speaker_calls": len(r_two), "flagged": flagged, "missed": len(r_two) - flagged,
                    "flag_delay_s": {"median": float(np.median(d)) if len(d) else None,
                                     "p90": float(np.quantile(d, 0.9)) if len(d) else None,
                                     "max": float(d.max()) if len(d) else None},
                    "second_speaker_s": [round(float(np.median([r["bounds"][1] - r["bounds"][0] for r in r_two])) / 1000, 1)],
                }
                x = res[proto.name]
                print(f"{proto.name}: one speaker {x['one_speaker_calls']} calls, false alarms {fa} "
                      f"(lowest scd_llr {min_llr_one if min_llr_one is None else round(min_llr_one, 2)}); "
                      f"A then B {len(r_two)} calls: flagged {flagged}, missed {len(r_two) - flagged} "
                      f"({_pct((len(r_two) - flagged) / max(len(r_two), 1))}); speech from the change to the flag "
                      f"(milestone resolution 5 s): median {x['flag_delay_s']['median']} s, "
                      f"p90 {x['flag_delay_s']['p90']} s, max {x['flag_delay_s']['max']} s")
        finally:
            await eng.stop()
        return res

    out = asyncio.run(run())
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


# ----------------------------------------------------------------------------- tts
def tts_args(ap: argparse.ArgumentParser) -> None:
    _common(ap)
    ap.add_argument("--speech", type=Path, required=True, metavar="DIR",
                    help="the training corpus's real speech (DIR/fsdd, DIR/librispeech-test-other; see "
                         "`python -m tools.train_tts --help`)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vbgw" / "tts-corpus2",
                    help="the training corpus (made by `python -m tools.train_tts`, cached there)")
    ap.add_argument("--families", help="comma-separated subset of the families (default: all in the corpus)")
    ap.add_argument("--shipped-only", action="store_true",
                    help="skip the leave-one-family-out retraining (minutes); only the shipped detector")
    ap.add_argument("--weights", type=Path, help="detector weights (default: the shipped file)")


def _tts_cpu_ms_per_s(det, pcm: np.ndarray, chunk: int, repeats: int = 3) -> float:
    """CPU time (process_time) of the live path, TtsStream.add, per second of audio."""
    best = float("inf")
    for _ in range(repeats):
        st = det.stream()
        t0 = time.process_time()
        for i in range(0, len(pcm), chunk):
            st.add(pcm[i:i + chunk])
        best = min(best, time.process_time() - t0)
    return 1000 * best / (len(pcm) / 8000)


def tts_main(args) -> int:
    """The synthetic-speech detector, measured like a paper (docs/benchmarks.md):

    1. leave-one-family-out: for each generator family, a model trained without it (same recipe
       as the shipped one) on the family's crops vs real crops of TEST speakers (never trained on):
       EER, detection at that model's threshold, TEST false alarms;
    2. the shipped detector (the weights file, not retrained): false alarms on the TEST speakers'
       telephony crops and on the dev protocols' real files of TEST speakers, in-domain detection;
    3. CPU per second of audio of the live path (TtsStream.add), 0.2 s and 4 s pieces."""
    from engine.fraud import TtsDetector
    from tools.train_tts import cached_features, crop_scores, evaluate, normalised
    from tools.train_tts_corpus import TEST_SPEAKERS, build_corpus
    det = TtsDetector.load(args.weights)
    out: dict = {"version": det.version, "threshold": det.threshold}
    print(f"detector {det.version}, threshold P >= {det.threshold:.4f}")
    real, fams = build_corpus(args.cache, args.speech)
    fs = cached_features(args.cache, real, fams)
    # the training tool's order: the same seeded runs, so the same table
    families = [f for f in (args.families.split(",") if args.families else list(fams)) if f in fams]
    if not args.shipped_only:
        print("leave-one-family-out (a model per row, trained without that family):")
        report, _ = evaluate(fs, families=families, log=print)
        out["lofo"] = report["families"]
        print("| left-out family | kind | crops | EER | detected at threshold | TEST false alarms |")
        print("|---|---|---|---|---|---|")
        for f, r in sorted(report["families"].items(), key=lambda kv: (kv[1]["kind"], kv[0])):
            print(f"| {f} | {r['kind']} | {r['crops']} | {_pct(r['eer'])} | {_pct(r['detected'])} | "
                  f"{_pct(r['test_false_alarms'])} |")
    # the shipped detector, unchanged, on audio of speakers it never saw
    role = fs.role()
    fs = normalised(fs, det.params["cmn_prior"])
    prob = np.array([det.probability(s) for s in crop_scores(det.params, fs, np.arange(len(fs.family)))])
    test = np.flatnonzero(fs.real & (role == "TEST"))
    fa = int((prob[test] >= det.threshold).sum())
    out["shipped"] = {"test_speaker_crops": len(test), "test_false_alarms": fa}
    print(f"shipped: TEST speakers ({', '.join(TEST_SPEAKERS)}), {len(test)} telephony crops of 3-6 s: "
          f"false alarms {fa} ({_pct(fa / max(len(test), 1))})")
    det_rows = {}
    for f in families:
        idx = np.flatnonzero(fs.family == f)
        hit = int((prob[idx] >= det.threshold).sum())
        det_rows[f] = [hit, len(idx)]
    out["shipped"]["in_domain_detected"] = det_rows
    print("shipped, in domain (families it was trained on; vocoded crops include CAL/TEST speakers): " +
          ", ".join(f"{f} {_pct(h / max(n, 1))}" for f, (h, n) in det_rows.items()))
    proto_files = proto_fa = 0
    for proto in _protocols(args):
        for _, spk, p in proto.enrol + proto.test:
            if not any(spk == t.split("-", 1)[1] for t in TEST_SPEAKERS):
                continue
            r = det.score_pcm(proto.audio(p))
            if r is not None:
                proto_files += 1
                proto_fa += int(r.label == "TTS_Detected")
    out["shipped"]["protocol_test_speaker_files"] = [proto_fa, proto_files]
    print(f"shipped: dev protocols' real files of TEST speakers: false alarms {proto_fa} / {proto_files}")
    pcm = np.concatenate([proto.audio(p) for proto in _protocols(args)[:1] for _, _, p in proto.enrol[:6]])
    cost = {str(c / 8000): round(_tts_cpu_ms_per_s(det, pcm, c), 3) for c in (1600, 32000)}
    out["cpu_ms_per_audio_s"] = cost
    print(f"CPU of the live path per second of audio ({len(pcm) / 8000:.0f} s of speech): "
          + ", ".join(f"{k} s pieces {v} ms" for k, v in cost.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def add_benches(bsub) -> None:
    for name, help_, a, m in (
            ("blocklist", "blocklist miss and false-match rates on the dev protocols", blocklist_args, blocklist_main),
            ("replay", "replay/duplicate (PAD type A/B) detection and false positives", replay_args, replay_main),
            ("speaker-change", "speaker-change flags on spliced two-speaker calls", scd_args, scd_main),
            ("tts", "synthetic-speech detector: leave-one-family-out EER, false alarms, CPU", tts_args, tts_main)):
        p = bsub.add_parser(name, help=help_)
        a(p)
        p.set_defaults(fn=m)


if __name__ == "__main__":      # pragma: no cover
    sys.exit(0)
