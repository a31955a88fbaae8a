"""Call recordings as the engine wants them: the customer's channel, int16, 8 kHz, block by block.

Two containers, told apart by their bytes (the file name a client chose only decides which
decoder reports on bytes that are neither, so a broken .wav is still BAD_AUDIO):

* WAV (RIFF/RF64), as Genesys Cloud exports it: PCM 8-32 bit, float, G.711 mu-law or A-law,
  WAVE_FORMAT_EXTENSIBLE; decoded by libsndfile (soundfile), connectors.codecs.iter_wav_8k.
* MP4/M4A (ISO BMFF), as NICE CXone's media playback serves voice recordings: AAC (also MP3
  or ALAC in MP4); decoded by FFmpeg through PyAV, whose wheel ships the codecs, so nothing
  is installed beside Python. Only FFmpeg's mov/mp4 demuxer and the decoders in
  MP4_AUDIO_CODECS are used (no format probing, no external data references: an untrusted
  file reaches as little FFmpeg code as possible); a video track (NICE voice-and-screen)
  is ignored.

A stereo recording carries the agent on one channel and the customer on the other; which is
which is the provider's `ChannelMap` (NICE: agent left, customer right; configurable,
gateway/services/recordings/config.py). A mono file is used as it is. Any other layout is refused
(UNSUPPORTED_CHANNEL_LAYOUT): scoring the agent's voice as the customer's would enrol the
wrong person.

`RecordingSource` is what gateway.services.uploads analyses: `probe` reads the header only (format,
channels, duration: a too-long file is refused before decoding), `blocks` decodes at most a
few seconds at a time, so memory stays bounded whatever the recording's length. Every
failure is a ConnectorError with a stable code (answered 415 by the API)."""
from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from connectors.base import SAMPLE_RATE, ConnectorError
from connectors.codecs import FILE_RATES, StreamResampler, iter_wav_8k, soundfile_reason, wav_info

Role = Literal["customer", "agent", "other"]
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "mp3float", "alac"})
_CLOSE = 1003       # ConnectorError's close code (unused by HTTP callers)


@dataclass(frozen=True)
class ChannelMap:
    """Who speaks on each channel of a multi-channel recording, left (0) first."""
    roles: tuple[Role, ...]

    def __post_init__(self):
        if self.roles.count("customer") != 1:
            raise ValueError(f"a channel map names exactly one 'customer' channel, got {list(self.roles)}")

    def customer_channel(self, channels: int) -> int:
        """The channel to score for a file with `channels` channels."""
        if channels == 1:
            return 0
        if channels != len(self.roles):
            raise ConnectorError("UNSUPPORTED_CHANNEL_LAYOUT",
                                 f"the recording has {channels} channels; this provider's channel map "
                                 f"({', '.join(self.roles)}) describes {len(self.roles)}", _CLOSE)
        return self.roles.index("customer")


@dataclass(frozen=True)
class MediaInfo:
    """A recording's header: container, codec, rate, channels, length and the channel used."""
    container: Literal["wav", "mp4"]
    codec: str
    rate: int
    channels: int
    duration_s: float
    channel: int


def sniff(data: bytes, filename: str = "") -> Literal["wav", "mp4"]:
    """The container, from its first bytes (else from the file name's extension)."""
    if data[:4] in (b"RIFF", b"RIFX", b"RF64"):
        return "wav"            # libsndfile tells a broken or non-WAVE RIFF file (BAD_AUDIO)
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mp4"
    ext = filename.lower().rpartition(".")[2] if "." in filename else ""
    if ext == "wav":
        return "wav"
    if ext in ("mp4", "m4a"):
        return "mp4"
    raise ConnectorError("UNSUPPORTED_MEDIA", "the file is neither a WAV nor an MP4/M4A recording "
                                              "(.wav from Genesys, .mp4 from NICE)", _CLOSE)


def probe(data: bytes, channel_map: ChannelMap, filename: str = "") -> MediaInfo:
    """The recording's header and the channel that will be scored; nothing is decoded."""
    if sniff(data, filename) == "wav":
        w = wav_info(data, FILE_RATES)
        return MediaInfo("wav", w.subtype, w.rate, w.channels, w.duration_s, channel_map.customer_channel(w.channels))
    with _Mp4(data) as m:
        return MediaInfo("mp4", m.codec, m.rate, m.channels, m.duration_s, channel_map.customer_channel(m.channels))


def iter_8k(data: bytes, info: MediaInfo, block_s: float) -> Iterator[np.ndarray]:
    """The channel `info.channel` as int16 8 kHz blocks of about `block_s` seconds."""
    if info.container == "wav":
        yield from iter_wav_8k(data, block_s, channel=info.channel, rates=FILE_RATES)
        return
    with _Mp4(data) as m:
        yield from m.blocks(info.channel, block_s)


class RecordingSource:
    """A recording for gateway.services.uploads: probed once, then decoded block by block."""

    def __init__(self, channel_map: ChannelMap, filename: str = ""):
        self.channel_map = channel_map
        self.filename = filename
        self.info: MediaInfo | None = None

    def probe(self, data: bytes) -> MediaInfo:
        self.info = probe(data, self.channel_map, self.filename)
        return self.info

    def blocks(self, data: bytes, block_s: float) -> Iterator[np.ndarray]:
        info = self.info or self.probe(data)
        return iter_8k(data, info, block_s)


class _Mp4:
    """One MP4/M4A file opened with PyAV (FFmpeg): its first audio track."""

    def __init__(self, data: bytes):
        import av
        self._av = av
        try:
            # format="mp4": FFmpeg's mov demuxer only (no probing of other formats);
            # enable_drefs=0: never follow a data reference out of the file.
            self.container = av.open(io.BytesIO(data), mode="r", format="mp4", options={"enable_drefs": "0"})
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise ConnectorError("BAD_AUDIO", f"not a readable MP4 file: {_reason(exc)}", _CLOSE) from None
        try:
            audio = self.container.streams.audio
            if not audio:
                raise ConnectorError("UNSUPPORTED_MEDIA", "the MP4 file has no audio track", _CLOSE)
            self.stream = audio[0]
            ctx = self.stream.codec_context
            self.codec = ctx.name
            if self.codec not in MP4_AUDIO_CODECS:
                raise ConnectorError("UNSUPPORTED_MEDIA", f"MP4 audio in {self.codec!r} is not supported; "
                                                          "AAC (as NICE records), MP3 or ALAC are", _CLOSE)
            self.rate = int(ctx.sample_rate or 0)
            if self.rate not in FILE_RATES:
                raise ConnectorError("BAD_SAMPLE_RATE", f"unsupported sample rate {self.rate}", _CLOSE)
            self.channels = int(ctx.layout.nb_channels) if ctx.layout is not None else 0
            if self.channels < 1:
                raise ConnectorError("BAD_AUDIO", "the MP4 audio track declares no channels", _CLOSE)
            if self.stream.duration is not None and self.stream.time_base is not None:
                self.duration_s = float(self.stream.duration * self.stream.time_base)
            else:
                self.duration_s = (self.container.duration or 0) / 1_000_000
        except BaseException:
            self.container.close()
            raise

    def __enter__(self) -> "_Mp4":
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def blocks(self, channel: int, block_s: float) -> Iterator[np.ndarray]:
        if not 0 <= channel < self.channels:
            raise ConnectorError("BAD_CHANNEL", f"channel {channel} of a {self.channels}-channel file", _CLOSE)
        resampler = StreamResampler(self.rate, SAMPLE_RATE)
        want = max(1, int(block_s * SAMPLE_RATE))
        pending: list[np.ndarray] = []
        have = 0
        try:
            for frame in self.container.decode(self.stream):
                out = resampler.process(_channel_of(frame, channel, self.channels))
                if len(out):
                    pending.append(out)
                    have += len(out)
                if have >= want:
                    yield np.concatenate(pending)
                    pending, have = [], 0
        except self._av.error.FFmpegError as exc:
            raise ConnectorError("BAD_AUDIO", f"the MP4 audio cannot be decoded: {_reason(exc)}", _CLOSE) from None
        if pending:
            yield np.concatenate(pending)


def _channel_of(frame, channel: int, channels: int) -> np.ndarray:
    """One channel of a decoded frame as int16 (planar or packed; float or integer samples)."""
    x = frame.to_ndarray()
    x = x[channel] if frame.format.is_planar else x.reshape(-1, channels)[:, channel]
    if x.dtype.kind == "f":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    if x.dtype == np.int32:
        return (x >> 16).astype(np.int16)
    if x.dtype == np.uint8:
        return ((x.astype(np.int16) - 128) << 8).astype(np.int16)
    return x.astype(np.int16, copy=False)


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or soundfile_reason(exc)
    return str(text)[:200]
