"""Fixtures for the engine tests: model cache, one loaded engine, protocol audio."""
from __future__ import annotations

from pathlib import Path

import pytest



@pytest.fixture(scope="session")
def model_dir() -> Path:
    from engine.models import default_model_dir, fetch_models
    d = default_model_dir()
    fetch_models(d)          # fast when already present (sha256 check only)
    return d


@pytest.fixture(scope="session")
def engine_sync(model_dir):
    """A loaded (not started) CAM++ engine for synchronous use."""
    from engine import Engine, EngineConfig
    return Engine.load(EngineConfig(model_dir=model_dir))


@pytest.fixture
async def engine(model_dir):
    """A started CAM++ engine of the test's own (its threads stopped after the test)."""
    from engine import Engine, EngineConfig
    eng = Engine.load(EngineConfig(model_dir=model_dir))
    await eng.start()
    assert eng.ready
    yield eng
    await eng.stop()
