import time

import pytest

from engine.models import MODELS, fetch_models, model_path
from engine.types import ModelFileError


def test_fetch_is_fast_when_present(model_dir):
    t = time.monotonic()
    paths = fetch_models(model_dir)
    assert time.monotonic() - t < 5.0
    assert {p.name for p in paths} == {MODELS[n].filename for n in ("campp", "ge2e", "silero_vad")}


def test_model_path_missing(tmp_path):
    with pytest.raises(ModelFileError, match="vbgw models fetch"):
        model_path(tmp_path, "campp")


def test_model_path_corrupt(tmp_path, model_dir):
    bad = tmp_path / MODELS["silero_vad"].filename
    bad.write_bytes(b"\0" * MODELS["silero_vad"].size)
    with pytest.raises(ModelFileError, match="missing or corrupt"):
        model_path(tmp_path, "silero_vad")
    assert model_path(model_dir, "silero_vad").exists()


def test_engine_load_without_models(tmp_path):
    from engine import Engine, EngineConfig
    with pytest.raises(ModelFileError):
        Engine.load(EngineConfig(model_dir=tmp_path))
