"""Write tests/data/protocols: the small real-speech protocols the test suite reads.

    python scripts/make_test_data.py SOURCE_DIR

SOURCE_DIR holds full trial protocols in the format of tests/data/README.md (e.g. the
fsdd-tel, fsdd-tel2s, ls-other-tel and ls-other-tel2s protocols built from FSDD and
LibriSpeech test-other, see tests/data/README.md). Each mini protocol keeps, unchanged, the
audio of a few speakers (every enrol and test file) plus a few single files that tests name,
and the trials among them. The suite must never read anything outside the repository, so
whatever a test needs is listed here and copied in; the copy is byte-for-byte (the telephony
treatment, 8 kHz G.711 mu-law, is the source protocol's)."""
from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "protocols"

LS_SPEAKERS = {"1688", "1998", "2033", "2414", "3005"}
# tests/engine/test_engine_session.py walks the first nine speakers of ls-other-tel in sorted
# order; these enrol files keep that list (and its order) the same as the full protocol's.
LS_EXTRA = {"2609_enrol0", "3080_enrol0", "3080_enrol1", "3331_enrol0", "367_enrol0"}
SELECTION: dict[str, tuple[set[str], set[str]]] = {   # protocol: (whole speakers, single ids)
    "ls-other-tel": (LS_SPEAKERS, LS_EXTRA),
    "ls-other-tel2s": (LS_SPEAKERS, LS_EXTRA),
    "fsdd-tel": ({"george", "jackson", "lucas"}, set()),
    # the three files of tests/engine/data/reference_embeddings.npz live in *-tel2s
    "fsdd-tel2s": (set(), {"george_enrol0", "george_enrol1", "george_test0", "theo_test1"}),
}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def make(source: Path, out: Path = OUT) -> list[Path]:
    written = []
    for name, (speakers, ids) in SELECTION.items():
        src, dst = source / name, out / name
        if dst.exists():
            shutil.rmtree(dst)
        (dst / "audio").mkdir(parents=True)
        keep = {}
        for table, id_field in (("enrol.csv", "model_id"), ("test.csv", "test_id")):
            rows = [r for r in _rows(src / table) if r["speaker"] in speakers or r[id_field] in ids]
            _write(dst / table, [id_field, "speaker", "path"], rows)
            keep[table] = {r[id_field] for r in rows}
            for r in rows:
                shutil.copyfile(src / r["path"], dst / r["path"])
                written.append(dst / r["path"])
        trials = [r for r in _rows(src / "trials.csv")
                  if r["model_id"] in keep["enrol.csv"] and r["test_id"] in keep["test.csv"]]
        _write(dst / "trials.csv", ["model_id", "test_id", "target"], trials)
    return written


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    files = make(Path(sys.argv[1]))
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} audio files, {size / 1e6:.2f} MB, under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
