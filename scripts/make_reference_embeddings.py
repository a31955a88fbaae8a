"""Write tests/engine/data/reference_embeddings.npz: CAM++ embeddings of three short
protocol files computed with the PyTorch original (tools/bench/torch_campp.py, the
3D-Speaker model definition loading the same state dict), so the numpy port and the ONNX
graph are tested against torch, not against themselves.

    .venv/bin/pip install torch==2.13.0   # only for this script and `bench speed`
    .venv/bin/python scripts/make_reference_embeddings.py

Input to the encoder: the whole file (no VAD), engine.audio.campp_features (8 -> 16 kHz
resample_poly, 80-dim Kaldi fbank, mean-normalised).
"""
from pathlib import Path

import numpy as np
import torch

from engine.audio import campp_features
from tools.bench.torch_campp import load_campplus
from tools.protocol import read_audio
from engine.models import fetch_models, model_path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "tests" / "data" / "protocols"   # the in-repo protocol cuts (tests/data/README.md)
FILES = ["fsdd-tel2s/audio/george_test0.wav", "fsdd-tel2s/audio/theo_test1.wav",
         "ls-other-tel2s/audio/{ls}"]


def main():
    fetch_models()
    ls = sorted((SHARED / "ls-other-tel2s" / "audio").glob("*test*.wav"))[0].name
    files = [f.format(ls=ls) for f in FILES]
    m = load_campplus(model_path(None, "campp"))
    embs = []
    with torch.no_grad():
        for f in files:
            feats = campp_features(read_audio(SHARED / f))
            embs.append(m(torch.from_numpy(feats[None])).numpy()[0])
    out = REPO / "tests" / "engine" / "data" / "reference_embeddings.npz"
    np.savez(out, files=np.array(files), embeddings=np.stack(embs).astype(np.float32),
             torch_version=np.array(torch.__version__))
    print(out, files)


if __name__ == "__main__":
    main()
