"""CAM++: numpy port vs the PyTorch original (committed reference), ONNX vs numpy; GE2E."""
import numpy as np
import pytest

from engine.audio import campp_features
from engine.campp import CamppNumpy, CamppOnnx, CamppWeights
from engine.models import model_path

from engine_support import DATA, read


@pytest.fixture(scope="module")
def weights(model_dir):
    return CamppWeights(model_path(model_dir, "campp"))


@pytest.fixture(scope="module")
def reference():
    ref = np.load(DATA / "reference_embeddings.npz")
    feats = [campp_features(read(str(f))) for f in ref["files"]]
    return feats, ref["embeddings"]


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_numpy_matches_torch_reference(weights, reference):
    net = CamppNumpy(weights)
    for f, ref in zip(*reference):
        e = net.forward(f)
        assert np.abs(e - ref).max() < 1e-3 * np.abs(ref).max()
        assert _cos(e, ref) > 0.99999


def test_onnx_matches_numpy(weights, reference, tmp_path):
    net = CamppNumpy(weights)
    onx = CamppOnnx(weights, tmp_path / "campp.onnx", threads=2)
    feats, _ = reference
    for f in feats:
        a, b = net.forward(f), onx.forward(f)
        assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())
        assert _cos(a, b) > 0.99999
    # batched run of equal-length inputs = one by one
    T = min(len(f) for f in feats)
    batch = np.stack([f[:T] for f in feats])
    eb = onx.forward_batch(batch)
    for i in range(len(feats)):
        assert _cos(eb[i], net.forward(batch[i])) > 0.99999
    # segment pooling edge cases: T not a multiple of 100 after the stride
    for T in (40, 199, 201, 333):
        f = np.random.default_rng(T).standard_normal((T, 80)).astype(np.float32)
        assert _cos(net.forward(f), onx.forward(f)) > 0.99999


def test_engine_uses_cached_onnx(engine_sync):
    enc = engine_sync._pipeline.encoder
    assert enc.runtime == "onnx" and enc.onnx_path.exists()
    assert engine_sync.info.extractor_version.startswith("campp-onnx")
    assert engine_sync.info.dim == 192


def test_ge2e_end_to_end(model_dir):
    import asyncio

    from engine import Engine, EngineConfig
    eng = Engine.load(EngineConfig(encoder="ge2e", model_dir=model_dir))
    assert eng.info.dim == 256 and eng.info.model == "resemblyzer_ge2e"
    a = read("ls-other-tel2s/audio/" + _first_test("ls-other-tel2s", 0))
    b = read("ls-other-tel2s/audio/" + _first_test("ls-other-tel2s", 1))

    async def run():
        await eng.start()
        try:
            return await eng.embed_pcm(a), await eng.embed_pcm(b)
        finally:
            await eng.stop()
    ea, eb = asyncio.run(run())
    assert ea.vector.shape == (256,) and abs(np.linalg.norm(ea.vector) - 1) < 1e-5
    s = eng.score(ea, eb.vector)
    assert -1 <= s.cosine <= 1 and 0 <= s.bio_score <= 1


def _first_test(proto, k):
    import csv

    from engine_support import PROTOCOLS
    with open(PROTOCOLS / proto / "test.csv") as fh:
        rows = list(csv.DictReader(fh))
    spk = sorted({r["speaker"] for r in rows})[k]
    return next(r["path"] for r in rows if r["speaker"] == spk).split("/")[-1]


def test_damaged_onnx_cache_is_rebuilt(weights, tmp_path):
    bad = tmp_path / "campp.onnx"
    bad.write_bytes(b"not an onnx file")
    onx = CamppOnnx(lambda: weights, bad, threads=1)
    f = np.random.default_rng(1).standard_normal((120, 80)).astype(np.float32)
    assert _cos(onx.forward(f), CamppNumpy(weights).forward(f)) > 0.99999
