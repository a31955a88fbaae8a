"""Streaming silero VAD (silero_vad.onnx from the silero-vad 6.2.3 wheel, MIT) at 8 kHz.

The model is run by onnxruntime on 256-sample chunks (32 ms) with 32 samples of left
context and a recurrent state of shape (2, B, 128). `VadStream` holds one stream's state
(a few hundred bytes); `SileroVad.step_many` advances many streams together, one ORT call
per chunk index over the sub-batch of streams that still have a chunk at that index.

Decisions per chunk use hysteresis (speech starts at p >= on, ends at p < off) and
padding: `pad_chunks` chunks before a speech run (kept in a one-chunk look-back) and after
it (hangover) are passed on with the speech so word edges are not clipped. Speech time
counts only the chunks flagged speech (not the padding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHUNK = 256
CONTEXT = 32
CHUNK_MS = 32
SR = 8000


@dataclass
class VadStream:
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    on: bool = False
    hang: int = 0                    # padding chunks still to emit after speech ended
    prev: list = field(default_factory=list)   # last non-speech chunks (int16), leading pad

    def nbytes(self) -> int:
        return self.state.nbytes + self.context.nbytes + sum(c.nbytes for c in self.prev)


class SileroVad:
    def __init__(self, path: Path | str, threads: int = 1, threshold: float = 0.5,
                 off_delta: float = 0.15, pad_chunks: int = 1):
        import onnxruntime as ort
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sess = ort.InferenceSession(str(path), sess_options=o,
                                         providers=["CPUExecutionProvider"])
        self.on = float(threshold)
        self.off = max(0.0, float(threshold) - off_delta)
        self.pad = int(pad_chunks)
        self._sr = np.array(SR, dtype=np.int64)

    # -- raw model -----------------------------------------------------------------
    def probs_many(self, streams: list[VadStream], chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Advance each stream over its own (n_i, 256) float32 chunk array; returns the
        speech probability per chunk for each stream. Streams with fewer chunks drop out
        of the batch at later steps (sub-batching of the state)."""
        n = [len(c) for c in chunks]
        out = [np.empty(k, np.float32) for k in n]
        if not streams or max(n, default=0) == 0:
            return out
        order = np.argsort(n, kind="stable")[::-1]   # longest first: active set is a prefix
        ns = np.array(n)[order]
        B, T = len(order), int(ns[0])
        x = np.zeros((B, T, CHUNK), np.float32)               # padded, stacked once
        for j, i in enumerate(order):
            x[j, : n[i]] = chunks[i]
        state = np.stack([streams[i].state for i in order], axis=1)          # (2, B, 128)
        ctx = np.stack([streams[i].context for i in order])                  # (B, 32)
        probs = np.zeros((B, T), np.float32)
        active = (ns[None, :] > np.arange(T)[:, None]).sum(1)                # streams per step
        for t in range(T):
            b = int(active[t])
            inp = np.concatenate([ctx[:b], x[:b, t]], axis=1)
            p, st = self.sess.run(None, {"input": inp, "state": state[:, :b], "sr": self._sr})
            state[:, :b] = st
            ctx[:b] = x[:b, t, -CONTEXT:]
            probs[:b, t] = p[:, 0]
        for j, i in enumerate(order):
            streams[i].state = np.ascontiguousarray(state[:, j])
            streams[i].context = ctx[j].copy()
            out[i] = probs[j, : n[i]]
        return out

    # -- decisions -----------------------------------------------------------------
    def decide(self, stream: VadStream, pcm_chunks: np.ndarray, probs: np.ndarray):
        """Hysteresis + padding, chunk by chunk. Returns [(chunk index, [int16 audio to
        embed], is_speech)]: padding chunks are passed on as audio but not counted."""
        out = []
        for i, (c, p) in enumerate(zip(pcm_chunks, probs)):
            speech = bool(p >= (self.off if stream.on else self.on))
            keep = []
            if speech:
                if not stream.on and stream.prev:
                    keep.extend(stream.prev)           # leading pad
                stream.on = True
                stream.hang = self.pad
                stream.prev = []
                keep.append(c)
            else:
                stream.on = False
                if stream.hang > 0:                    # trailing pad
                    stream.hang -= 1
                    keep.append(c)
                elif self.pad:
                    stream.prev.append(c.copy())
                    if len(stream.prev) > self.pad:
                        stream.prev.pop(0)
            out.append((i, keep, speech))
        return out

    def process_many(self, streams: list[VadStream], pcms: list[np.ndarray]):
        """pcms: int16 arrays whose lengths are multiples of 256; one decide() list each."""
        chunks_i16 = [p.reshape(-1, CHUNK) for p in pcms]
        chunks_f = [c.astype(np.float32) * (1.0 / 32768.0) for c in chunks_i16]
        probs = self.probs_many(streams, chunks_f)
        return [self.decide(s, c, p) for s, c, p in zip(streams, chunks_i16, probs)]
