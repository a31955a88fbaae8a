"""Uploaded recordings (batch enrolment, blocklist fraudsters, Aculab sources): decoded,
embedded, fingerprinted and optionally kept, block by block, as the engine's file work.

One long upload used to stall every live call: the whole file was decoded into arrays
(float64 while resampling and fingerprinting, gigabytes for a 52 MB file) and embedded
ahead of live calls' work. Here:

* the WAV header is checked first (format, and the length against `max_s`: 413
  AUDIO_TOO_LONG before anything is decoded);
* the audio is decoded FILE_BLOCK_S at a time (connectors.codecs.iter_wav_8k); each block
  goes to the streaming embedder (engine.FileEmbedder), the streaming fingerprinter and,
  when the audio is kept, straight to its WAV file, then is dropped;
* every block is one unit of the engine's file work (Engine.run_file_work): it runs on the
  niced file threads and only while no live call's work waits;
* at most `uploads.max_concurrent` files are analysed at once; later uploads wait.

So an upload's memory is a few blocks, its voiceprint windows and its fingerprint whatever
its length, and live scoring goes first (docs/security.md).

Uploads are WAV files unless a `source` says otherwise: a CCaaS recording (.wav or .mp4, the
customer's channel of a stereo file) is a gateway.services.recordings.media.RecordingSource, probed
and decoded the same way (docs/recordings.md)."""
from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from connectors.base import ConnectorError
from connectors.codecs import SUPPORTED_RATES, WavInfo, iter_wav_8k, wav_info
from engine import Engine
from engine.facade import FILE_BLOCK_S
from engine.fraud.fingerprint import Fingerprinter, pack
from engine.types import Embedding
from gateway.errors import ApiError
from gateway.infra.files import FILE_MODE, private_dir

SAMPLE_RATE = 8000


@dataclass
class Analysis:
    """What an upload gave: its embedding (None without speech), its fingerprint (packed
    landmarks, None when not asked for or empty), its decoded length, the path of the kept
    8 kHz WAV (fsynced; None when not kept) and, when asked for, the decoded audio."""
    embedding: Embedding | None
    fingerprint: bytes | None
    duration_s: float
    path: str | None = None
    pcm: np.ndarray | None = None


class MediaSource(Protocol):
    """Another kind of upload than a mono-able WAV file: its header (with `duration_s`) and
    its 8 kHz int16 blocks."""
    def probe(self, data: bytes) -> Any: ...
    def blocks(self, data: bytes, block_s: float) -> Iterator[np.ndarray]: ...


def seconds_text(s: float) -> str:
    """A duration for a message, rounded *up* to the millisecond and without trailing zeros,
    so a file over a limit never reads as the limit itself (60.01 s, not "60.0 s")."""
    ms = math.ceil(round(s * 1000, 6))
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + " s"


def too_long(max_s: float, have_s: float) -> ApiError:
    return ApiError(413, "AUDIO_TOO_LONG", f"recordings may be at most {max_s:.0f} s long "
                                           f"(uploads.max_audio_s); this one is {seconds_text(have_s)}")


class _FileJob:
    """One upload's state between blocks (touched only by file work, one block at a time)."""

    def __init__(self, engine: Engine, blocks: Iterator[np.ndarray], max_s: float, fingerprint: bool,
                 save_to: Path | None, keep_pcm: bool):
        self.blocks = blocks
        self.max_samples = int(max_s * SAMPLE_RATE)
        self.max_s = max_s
        self.embedder = engine.file_embedder()
        self.fp = Fingerprinter() if fingerprint else None
        self.pcm: list[np.ndarray] | None = [] if keep_pcm else None
        self.samples = 0
        self.lock = threading.Lock()          # a cancelled upload's clean-up waits for its running block
        self.path = save_to
        self.writer = None
        if save_to is not None:
            import soundfile as sf
            private_dir(save_to.parent)
            fd = os.open(save_to, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
            self.fh = os.fdopen(fd, "w+b")
            self.writer = sf.SoundFile(self.fh, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16",
                                       format="WAV")

    def step(self) -> bool:
        """Decode and process the next block; False once the file is exhausted."""
        with self.lock:
            return self._step()

    def _step(self) -> bool:
        block = next(self.blocks, None)
        if block is None:
            return False
        self.samples += len(block)
        if self.samples > self.max_samples:      # a header that under-states the length
            raise too_long(self.max_s, self.samples / SAMPLE_RATE)
        self.embedder.add(block)
        if self.fp is not None:
            self.fp.add(block)
        if self.writer is not None:
            self.writer.write(block)
        if self.pcm is not None:
            self.pcm.append(block)
        return True

    def finish(self) -> Analysis:
        with self.lock:
            return self._finish()

    def _finish(self) -> Analysis:
        emb = self.embedder.result()
        fp = None
        if self.fp is not None:
            self.fp.finish()
            h, t = self.fp.landmarks()
            fp = pack(h, t) if len(h) else None
        path = None
        if self.writer is not None and self.path is not None:
            self.writer.close()                  # writes the final header
            self.fh.flush()
            os.fsync(self.fh.fileno())           # on disk before a row can point at it
            self.fh.close()
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)                     # ... and so is its directory entry
            finally:
                os.close(dfd)
            self.writer = None
            path = str(self.path)
        pcm = np.concatenate([np.zeros(0, np.int16), *self.pcm]) if self.pcm is not None else None
        return Analysis(emb, fp, self.samples / SAMPLE_RATE, path, pcm)

    def abandon(self) -> None:
        """Close and remove a partly written file (a failed or cancelled upload)."""
        with self.lock:
            self._abandon()

    def _abandon(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
                self.fh.close()
            except Exception:  # noqa: BLE001 - removal below is what matters
                pass
            self.writer = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Uploads:
    def __init__(self, engine: Engine, max_s: float, max_concurrent: int):
        self.engine = engine
        self.max_s = max_s
        self._slots = asyncio.Semaphore(max_concurrent)

    async def header(self, data: bytes, source: MediaSource | None = None,
                     rates: Container[int] = SUPPORTED_RATES) -> WavInfo:
        try:
            return await self.engine.run_file_work(lambda: source.probe(data) if source else wav_info(data, rates))
        except ConnectorError as exc:
            raise ApiError(415, exc.code, exc.message) from None

    async def analyse(self, data: bytes, *, max_s: float | None = None, fingerprint: bool = False,
                      save_to: Path | None = None, keep_pcm: bool = False,
                      source: MediaSource | None = None, rates: Container[int] = SUPPORTED_RATES) -> Analysis:
        """Decode, embed and (optionally) fingerprint, keep as an 8 kHz WAV at `save_to`
        (owner-only, created here, removed again if anything fails) and return the decoded
        audio (`keep_pcm`, for short files only: Aculab sources). `source`: how to read a
        file that is not a plain WAV upload (module docstring); `rates`: the sample rates a plain
        WAV may have (the Aculab API takes any rate from 8 kHz, connectors.codecs.ResamplableRates)."""
        max_s = self.max_s if max_s is None else max_s
        if not data:
            raise ApiError(400, "FILE_REQUIRED", "a non-empty file field is required")
        async with self._slots:
            info = await self.header(data, source, rates)
            if info.duration_s > max_s:
                raise too_long(max_s, info.duration_s)

            def blocks() -> Iterator[np.ndarray]:
                return source.blocks(data, FILE_BLOCK_S) if source else iter_wav_8k(data, FILE_BLOCK_S, rates=rates)
            job = await self.engine.run_file_work(
                lambda: _FileJob(self.engine, blocks(), max_s, fingerprint, save_to, keep_pcm))
            try:
                while await self.engine.run_file_work(job.step):
                    pass
                return await self.engine.run_file_work(job.finish)
            except ConnectorError as exc:
                await self._abandon(job)
                raise ApiError(415, exc.code, exc.message) from None
            except BaseException:
                await self._abandon(job)
                raise

    async def _abandon(self, job: _FileJob) -> None:
        try:
            await asyncio.shield(asyncio.to_thread(job.abandon))
        except Exception:  # noqa: BLE001 - start-up reconciliation removes what is left
            pass

    async def fingerprint(self, pcm: np.ndarray) -> bytes | None:
        """Landmarks of decoded audio (short: Aculab sources), streamed as file work."""
        def run():
            fp = Fingerprinter()
            step = int(FILE_BLOCK_S * SAMPLE_RATE)
            for i in range(0, len(pcm), step):
                fp.add(pcm[i:i + step])
            fp.finish()
            h, t = fp.landmarks()
            return pack(h, t) if len(h) else None
        return await self.engine.run_file_work(run)

