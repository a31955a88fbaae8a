"""Trial protocols built from raw speech through the telephony channel, cut to exact
amounts of net speech (for the duration benchmark and the calibration research).

    python -m tools.speechset --speech $SPEECH/librispeech-test-other \
        --speech $SPEECH/fsdd --out /tmp/speechset \
        [--enrol-s 4 --enrol-s 12] [--test-s 1 --test-s 2 --test-s 3 --test-s 5] [--splits 3]

Speech directories: either `<speaker>/**/*.{flac,wav,ogg}` (LibriSpeech and most corpora:
the first directory level is the speaker) or FSDD's flat `DIGIT_SPEAKER_INDEX.wav`.

Every source file goes through the telephony channel of the shared protocols (resampled
to 8 kHz, level -26 dBFS, G.711 mu-law). A speaker's files, in a seeded random order, are
joined into one stream; the first 40 % of the stream's files are the enrolment pool, the
rest the test pool, and each split rotates that order so other files become enrolment.
Enrolments and tests are consecutive, non-overlapping cuts of their pool that hold exactly
E (enrolment) or D (test) seconds of speech as the engine's own VAD counts it: the cut ends
at the 32 ms chunk where the VAD's speech count reaches the target, so embedding the cut
file gives `speech_ms` = the target (rounded up to 32 ms), the same audio the product's
EARLY/NORMAL milestone would embed at that much speech.

One protocol directory per corpus, enrolment length and test length (`<corpus>-e<E>-t<D>`,
the format of tests/data/README.md; audio shared through an `audio` symlink).
Trials: every model against every test; a target trial only within one split (so the
enrolment and test audio never overlap), non-target trials across all splits.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.types import SAMPLE_RATE
from engine.vad import CHUNK, CHUNK_MS, SileroVad, VadStream

LEVEL_DBFS = -26.0
ENROL_POOL = 0.4
AUDIO_EXT = (".flac", ".wav", ".ogg")
_FSDD = re.compile(r"^(\d+)_([A-Za-z]+)_(\d+)\.wav$")


def find_speakers(root: Path) -> dict[str, list[Path]]:
    """speaker -> sorted source files (FSDD flat layout or one directory per speaker)."""
    root = Path(root)
    flat = sorted(p for p in root.iterdir() if p.is_file() and _FSDD.match(p.name))
    out: dict[str, list[Path]] = {}
    if flat:
        for p in flat:
            out.setdefault(_FSDD.match(p.name).group(2), []).append(p)
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXT)
        if files:
            out[d.name] = files
    return out


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """float -> float polyphase resampling (scipy), the step before the level and G.711 of the
    simulated channel. Not the product's resampler on purpose: this makes telephony audio from
    studio speech (as the shared protocols were made); the tools read that audio back, and any
    call audio, with the product's decoder (tools/protocol.read_audio)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    from math import gcd

    from scipy.signal import resample_poly
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(np.asarray(x, dtype=np.float64), sr_out // g, sr_in // g).astype(np.float32)


def telephony(x: np.ndarray, sr: int) -> np.ndarray:
    """float audio at `sr` -> int16 8 kHz at -26 dBFS (RMS), through G.711 mu-law."""
    from tools.train_tts_corpus import ulaw_roundtrip
    y = _resample(np.asarray(x, np.float64) - float(np.mean(x)), sr, SAMPLE_RATE).astype(np.float64)
    rms = float(np.sqrt(np.mean(y * y))) if len(y) else 0.0
    if rms > 0:
        y = y * (10 ** (LEVEL_DBFS / 20) / rms)
    y = ulaw_roundtrip(np.clip(y, -1.0, 32767 / 32768))
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def read_channel(path: Path) -> np.ndarray:
    """A corpus file (FLAC, OGG or WAV: studio speech, one speaker) through the telephony channel;
    several channels are one voice here, so they are averaged before the channel."""
    import soundfile as sf
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return telephony(x.mean(axis=1), sr)


def _flags(vad: SileroVad, segs: list[np.ndarray]) -> list[np.ndarray]:
    """Per-chunk speech flags of each segment, each with a fresh VAD stream (batched)."""
    segs = [g[: len(g) // CHUNK * CHUNK] for g in segs]
    res = vad.process_many([VadStream() for _ in segs], segs)
    return [np.fromiter((d[2] for d in r), dtype=bool, count=len(r)) for r in res]


def cuts(vad: SileroVad, x: np.ndarray, speech_ms: int, gap_s: float = 0.25,
         slack_s: float = 1.5) -> list[np.ndarray]:
    """Consecutive cuts of x, each holding `speech_ms` of speech as a fresh VAD stream
    (the engine embedding the cut as a file) counts it, ending at the chunk where that
    count reaches the target.

    One VAD pass over x places the cuts; a second, batched pass over every cut (fresh
    state, `slack_s` beyond the first pass's end) finds each exact end. A cut whose fresh
    count falls short is dropped. Cuts may overlap by up to `slack_s` (same speaker and
    pool only)."""
    need = -(-int(speech_ms) // CHUNK_MS)
    cum = np.cumsum(_flags(vad, [x])[0])
    starts, ends = [], []
    start_chunk = 0
    while start_chunk < len(cum):
        base = cum[start_chunk - 1] if start_chunk else 0
        hit = np.searchsorted(cum, base + need)            # first chunk reaching the count
        if hit >= len(cum):
            break
        starts.append(start_chunk * CHUNK)
        ends.append((int(hit) + 1) * CHUNK)
        start_chunk = int(hit) + 1 + int(gap_s * SAMPLE_RATE) // CHUNK
    slack = int(slack_s * SAMPLE_RATE)
    out = []
    for s0, fl in zip(starts, _flags(vad, [x[s0:e + slack] for s0, e in zip(starts, ends)])):
        hit = np.flatnonzero(np.cumsum(fl) >= need)
        if len(hit):
            out.append(x[s0:s0 + (int(hit[0]) + 1) * CHUNK])
    return out


@dataclass
class Item:
    id: str
    speaker: str
    split: int
    path: str


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    import soundfile as sf
    if not path.exists():
        sf.write(str(path), pcm.astype(np.float32) / 32768.0, SAMPLE_RATE, subtype="ULAW")


def build(vad: SileroVad, speech: Path, out: Path, enrol_s: list[float], test_s: list[float],
          splits: int = 3, seed: int = 0, name: str | None = None,
          log=print) -> list[Path]:
    """Write the protocols of one speech directory; returns their directories."""
    name = name or speech.name
    rng = np.random.default_rng(seed)
    audio = out / f"{name}-audio"
    audio.mkdir(parents=True, exist_ok=True)
    enrols: dict[float, list[Item]] = {e: [] for e in enrol_s}
    tests: dict[float, list[Item]] = {d: [] for d in test_s}
    speakers = find_speakers(speech)
    for spk, files in speakers.items():
        order = [files[i] for i in rng.permutation(len(files))]
        chans = {f: read_channel(f) for f in order}
        n_enrol = max(1, int(round(ENROL_POOL * len(order))))
        for r in range(splits):
            rot = order[r * len(order) // splits:] + order[: r * len(order) // splits]
            pools = {"e": np.concatenate([chans[f] for f in rot[:n_enrol]]),
                     "t": np.concatenate([chans[f] for f in rot[n_enrol:]])}
            for kind, lengths, dest in (("e", enrol_s, enrols), ("t", test_s, tests)):
                for sec in lengths:
                    for k, pcm in enumerate(cuts(vad, pools[kind], int(sec * 1000))):
                        iid = f"{spk}_s{r}_{kind}{sec:g}_{k}"
                        _write_wav(audio / f"{iid}.wav", pcm)
                        dest[sec].append(Item(iid, spk, r, f"audio/{iid}.wav"))
        log(f"{name}: speaker {spk}: {len(files)} files, "
            + ", ".join(f"{sum(i.speaker == spk for i in enrols[e])} x {e:g} s enrol" for e in enrol_s)
            + ", " + ", ".join(f"{sum(i.speaker == spk for i in tests[d])} x {d:g} s test" for d in test_s))
    dirs = []
    for e in enrol_s:
        for d in test_s:
            pdir = out / f"{name}-e{e:g}-t{d:g}"
            pdir.mkdir(parents=True, exist_ok=True)
            link = pdir / "audio"
            if not link.exists():
                link.symlink_to(Path("..") / audio.name)
            _write_csv(pdir / "enrol.csv", ["model_id", "speaker", "path"],
                       [(i.id, i.speaker, i.path) for i in enrols[e]])
            _write_csv(pdir / "test.csv", ["test_id", "speaker", "path"],
                       [(i.id, i.speaker, i.path) for i in tests[d]])
            _write_csv(pdir / "trials.csv", ["model_id", "test_id", "target"],
                       [(m.id, t.id, int(m.speaker == t.speaker))
                        for m in enrols[e] for t in tests[d]
                        if m.speaker != t.speaker or m.split == t.split])
            dirs.append(pdir)
    return dirs


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--speech", action="append", required=True, type=Path,
                    help="speech directory (repeatable): <speaker>/**/*.flac|wav|ogg or FSDD")
    ap.add_argument("--out", type=Path, required=True, help="where the protocols are written")
    ap.add_argument("--enrol-s", action="append", type=float, default=None,
                    help="enrolment speech seconds (repeatable; default 4 and 12)")
    ap.add_argument("--test-s", action="append", type=float, default=None,
                    help="test speech seconds (repeatable; default 1, 2, 3 and 5)")
    ap.add_argument("--splits", type=int, default=3, help="enrolment/test rotations per speaker")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", type=Path, default=None)


def load_vad(model_dir: Path | None = None) -> SileroVad:
    from engine.config import EngineConfig
    from engine.models import model_path
    cfg = EngineConfig(**({"model_dir": model_dir} if model_dir else {}))
    return SileroVad(model_path(cfg.model_dir, "silero_vad"), threads=1,
                     threshold=cfg.vad_threshold, pad_chunks=cfg.vad_pad_ms // CHUNK_MS)


def main(args: argparse.Namespace) -> int:
    vad = load_vad(args.model_dir)
    for sp in args.speech:
        for d in build(vad, sp, args.out, args.enrol_s or [4, 12], args.test_s or [1, 2, 3, 5],
                       splits=args.splits, seed=args.seed):
            print(d)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m tools.speechset", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    sys.exit(main(ap.parse_args()))
