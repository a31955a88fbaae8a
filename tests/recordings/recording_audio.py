"""Call recordings made in the tests from the real speech in tests/data: the caller on one
channel, the agent (another real speaker, or silence) on the other, written as WAV in the
formats CCaaS platforms export and as AAC in MP4 with PyAV, as NICE records. Nothing binary
is checked in: every file is made here, from the repository's speech."""
from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from support import protocol_audio

P = "ls-other-tel"
CALLER = "1688"         # the customer whose voice is enrolled and later verified
AGENT = "1998"          # the agent on the other channel
IMPOSTOR = "2033"


def speech(*names: str) -> np.ndarray:
    """Protocol WAVs (8 kHz mu-law) joined, as int16."""
    return np.concatenate([sf.read(protocol_audio(P, n), dtype="int16")[0] for n in names])


def at_rate(x: np.ndarray, rate: int) -> np.ndarray:
    """8 kHz int16 -> `rate` (rational resampling; 11025 and 44100 included)."""
    if rate == 8000:
        return x
    from math import gcd
    g = gcd(rate, 8000)
    y = resample_poly(x.astype(np.float64), rate // g, 8000 // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def two_channels(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    n = max(len(left), len(right))
    out = np.zeros((n, 2), np.int16)
    out[:len(left), 0] = left
    out[:len(right), 1] = right
    return out


def stereo_call(customer_side: int = 1, agent: np.ndarray | None = None, rate: int = 8000) -> np.ndarray:
    """(frames, 2) int16: the caller's enrolment speech on `customer_side`, the agent's
    speech (or what `agent` gives, e.g. silence) on the other."""
    caller = at_rate(speech(f"{CALLER}_enrol0"), rate)
    agent = at_rate(speech(f"{AGENT}_enrol0"), rate) if agent is None else agent
    return two_channels(agent, caller) if customer_side == 1 else two_channels(caller, agent)


def wav_bytes(frames: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    """A WAV file (fmt "WAVEX": WAVE_FORMAT_EXTENSIBLE) of int16 frames."""
    buf = io.BytesIO()
    sf.write(buf, frames, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def mp4_bytes(frames: np.ndarray, rate: int, codec: str = "aac", container: str = "mp4") -> bytes:
    """frames (n, channels) int16 encoded with PyAV (FFmpeg) into an MP4/M4A file."""
    import av
    n, channels = frames.shape
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    planar = np.ascontiguousarray((frames.T / 32768.0).astype(np.float32))
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
        frame = av.AudioFrame.from_ndarray(planar if fmt.endswith("p") else planar.T.reshape(1, -1).copy(),
                                           format="fltp" if fmt.endswith("p") else "flt", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def mulaw_of(x: np.ndarray) -> bytes:
    """8 kHz int16 as the raw mu-law a live call streams."""
    import audioop_compat
    return audioop_compat.lin2ulaw(x)
