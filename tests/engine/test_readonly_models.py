"""The model dir may be read-only (a container image's, owned by root): the gateway never
writes into it at run time (issue #10, section 4). The CAM++ ONNX graph derived from the
weights is prebuilt by `vbgw models fetch` (the image does it at build time), else built into
the cache dir under the data dir."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from engine.models import MODELS
from support import REPO, readonly_mount


def _model_copy(model_dir: Path, dest: Path) -> Path:
    """The verified model files alone (no prebuilt graph), as a fresh image layer would hold."""
    dest.mkdir()
    for name in ("campp", "silero_vad"):
        shutil.copy2(model_dir / MODELS[name].filename, dest / MODELS[name].filename)
    return dest


def test_read_only_model_dir_gateway_engine_loads(model_dir, tmp_path):
    """Reproduction: `OSError: [Errno 30] Read-only file system` on first start."""
    models = _model_copy(model_dir, tmp_path / "models")
    data = tmp_path / "data"
    script = ("from gateway.infra.config import load_settings\n"
              "from engine import Engine\n"
              "s = load_settings()\n"
              "e = Engine.load(s.engine)\n"
              "print(e._pipeline.encoder.onnx_path)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VBGW_")}
    env.update(VBGW_MODEL_DIR=str(models), VBGW_SERVER__DATA_DIR=str(data))
    proc = subprocess.run([*readonly_mount(models), sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = Path(proc.stdout.strip().splitlines()[-1])
    assert built.parent == data / "cache" and built.exists()
    assert sorted(p.name for p in models.iterdir()) == sorted(MODELS[n].filename for n in ("campp", "silero_vad"))


def test_models_fetch_prebuilds_the_graph_and_the_engine_uses_it(model_dir, tmp_path, capsys, monkeypatch):
    from engine import Engine, EngineConfig
    from gateway.cli import main as cli
    models = _model_copy(model_dir, tmp_path / "models")
    for name in ("ge2e",):      # fetch checks every non-optional model: present, no download
        shutil.copy2(model_dir / MODELS[name].filename, models / MODELS[name].filename)
    monkeypatch.setenv("VBGW_MODEL_DIR", str(models))
    assert cli.main(["models", "fetch"]) == 0
    out = capsys.readouterr()
    graphs = list(models.glob("campp-*.onnx"))
    assert len(graphs) == 1 and str(graphs[0]) in out.out and "building the CAM++ ONNX graph" in out.err
    # A cache dir elsewhere is not written when the model dir has the graph.
    eng = Engine.load(EngineConfig(model_dir=models, cache_dir=tmp_path / "cache"))
    assert eng._pipeline.encoder.onnx_path == graphs[0]
    assert not (tmp_path / "cache").exists()
