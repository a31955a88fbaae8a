"""Speaker encoders behind one interface: int16 8 kHz speech segments -> L2-normalised vectors."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import campp as _campp
from .audio import campp_features
from .models import MODELS, model_path


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Encoder:
    name: str            # "campp" | "ge2e"
    model: str           # model name for ModelInfo / Embedding.model
    dim: int
    extractor_version: str
    min_samples: int     # shortest 8 kHz input it can embed

    def embed(self, pcms: list[np.ndarray], max_batch: int = 32) -> np.ndarray:
        raise NotImplementedError

    def embed_one(self, pcm: np.ndarray) -> np.ndarray | None:
        """One segment on the calling thread only (the engine's scheduler threads call it
        concurrently); None when it is too short to embed."""
        if len(pcm) < self.min_samples:
            return None
        return self.embed([pcm])[0]


class CamppEncoder(Encoder):
    name = "campp"
    model = "campplus_cn_en_common"
    dim = _campp.DIM
    min_samples = 1600   # 0.2 s: enough frames for the statistics pooling

    def __init__(self, model_dir: Path, runtime: str = "onnx", threads: int = 2, cache_dir: Path | None = None):
        wpath = model_path(model_dir, "campp")      # sha256-verified weights
        self.runtime = runtime
        self.net: _campp.CamppOnnx | _campp.CamppNumpy
        if runtime == "onnx":
            # The graph is built from the verified weights once, under a name derived from
            # their sha256 and the builder version: prebuilt in the model dir by `vbgw models
            # fetch` (an image builds it then), else built into cache_dir on first use.
            prebuilt = campp_onnx_path(model_dir)
            cache = prebuilt if cache_dir is None else Path(cache_dir).expanduser() / prebuilt.name
            weights = lambda: _campp.CamppWeights(wpath)  # noqa: E731
            try:
                path = prebuilt if prebuilt.exists() else cache
                self.net = _campp.CamppOnnx(weights, path, threads=threads)
            except OSError:
                if path == cache:
                    raise
                path = cache      # a damaged prebuilt graph in a read-only model dir
                self.net = _campp.CamppOnnx(weights, path, threads=threads)
            self.onnx_path = path
        elif runtime == "numpy":
            self.net = _campp.CamppNumpy(_campp.CamppWeights(wpath))
        else:
            raise ValueError(f"unknown CAM++ runtime {runtime!r}")
        self.extractor_version = f"campp-{runtime}-{_campp.ONNX_BUILDER_VERSION}"

    def features(self, pcm: np.ndarray) -> np.ndarray:
        return campp_features(pcm)

    def embed(self, pcms: list[np.ndarray], max_batch: int = 32) -> np.ndarray:
        """Features and embeddings; with the ONNX runtime each utterance is one run and
        the runs are spread over the encoder's threads (see CamppOnnx)."""
        out = np.zeros((len(pcms), self.dim), np.float32)
        net = self.net
        if isinstance(net, _campp.CamppOnnx):            # runtime "onnx"
            def one(p):
                f = self.features(p)
                if len(f) < _campp.MIN_FRAMES:
                    return None
                return net._run(net.sess_one if len(pcms) > 1 else net.sess_lat, f[None])[0]
            for i, e in enumerate(net.map(one, list(pcms))):
                if e is not None:
                    out[i] = e
            return _l2(out)
        for i, p in enumerate(pcms):
            f = self.features(p)
            if len(f) >= _campp.MIN_FRAMES:
                out[i] = self.net.forward(f)
        return _l2(out)

    def embed_one(self, pcm: np.ndarray) -> np.ndarray | None:
        f = self.features(pcm)
        if len(f) < _campp.MIN_FRAMES:
            return None
        net = self.net
        if isinstance(net, _campp.CamppOnnx):            # runtime "onnx"
            # single-threaded session: the scheduler runs one segment per thread
            return _l2(net._run(net.sess_one, f[None]))[0]
        return _l2(self.net.forward(f)[None])[0]


class Ge2eEncoder(Encoder):
    name = "ge2e"
    model = "resemblyzer_ge2e"
    dim = 256
    min_samples = 4000   # 0.5 s; shorter inputs are padded to one 1.6 s partial anyway
    extractor_version = "ge2e-numpy-1"

    def __init__(self, model_dir: Path, threads: int = 2):
        from .ge2e import GE2EEncoder
        self.net = GE2EEncoder(model_path(model_dir, "ge2e"))
        self.runtime = "numpy"

    def embed(self, pcms: list[np.ndarray], max_batch: int = 32) -> np.ndarray:
        from .ge2e import embed_pcm8k
        if not pcms:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for k in range(0, len(pcms), max_batch):
            out.append(embed_pcm8k(self.net, pcms[k:k + max_batch]))
        return _l2(np.concatenate(out))


def campp_onnx_path(model_dir: Path) -> Path:
    """Where `vbgw models fetch` puts the CAM++ ONNX graph built from the pinned weights."""
    key = hashlib.sha256(f"{MODELS['campp'].sha256}:{_campp.ONNX_BUILDER_VERSION}".encode()).hexdigest()[:12]
    return Path(model_dir).expanduser() / f"campp-{key}.onnx"


def prebuild_campp_onnx(model_dir: Path) -> tuple[Path, bool]:
    """Build the CAM++ ONNX graph into the model dir unless it is there: (path, built now)."""
    path = campp_onnx_path(model_dir)
    if path.exists():
        return path, False
    _campp.CamppOnnx._build(lambda: _campp.CamppWeights(model_path(model_dir, "campp")), path)
    return path, True


def load_encoder(name: str, model_dir: Path, runtime: str = "onnx", threads: int = 2,
                 cache_dir: Path | None = None) -> Encoder:
    if name == "campp":
        return CamppEncoder(model_dir, runtime=runtime, threads=threads, cache_dir=cache_dir)
    if name == "ge2e":
        return Ge2eEncoder(model_dir, threads=threads)
    raise ValueError(f"unknown encoder {name!r}")
