"""gateway.services.recordings.media: recordings decoded to the customer's channel at 8 kHz, block by
block, from every WAV flavour CCaaS platforms export and from AAC in MP4 (made here with
PyAV from the repository's speech)."""
from __future__ import annotations

import numpy as np
import pytest

from connectors.base import ConnectorError
from gateway.services.recordings.media import ChannelMap, RecordingSource, sniff
from recording_audio import at_rate, mp4_bytes, speech, stereo_call, two_channels, wav_bytes

NICE_MAP = ChannelMap(("agent", "customer"))
LEFT_MAP = ChannelMap(("customer", "agent"))


def decode(data: bytes, cmap: ChannelMap = NICE_MAP, filename: str = "") -> tuple[object, np.ndarray]:
    src = RecordingSource(cmap, filename)
    info = src.probe(data)
    blocks = list(src.blocks(data, 5.0))
    assert all(len(b) <= 6 * 8000 for b in blocks)          # bounded blocks, whatever the length
    return info, np.concatenate([np.zeros(0, np.int16), *blocks])


def similarity(a: np.ndarray, b: np.ndarray, max_lag: int = 3000) -> float:
    """Best normalised cross-correlation of a and b within +-max_lag samples (codec delay)."""
    from scipy.signal import correlate
    n = min(len(a), len(b))
    a = a[:n].astype(np.float64)
    b = b[:n].astype(np.float64)
    c = correlate(a, b, mode="full", method="fft")[n - 1 - max_lag:n + max_lag]
    return float(np.max(c) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


CALLER = speech("1688_enrol0")
AGENT = speech("1998_enrol0")


@pytest.mark.parametrize("subtype,fmt,rate", [
    ("PCM_16", "WAV", 8000), ("ULAW", "WAV", 8000), ("ALAW", "WAV", 8000), ("PCM_16", "WAVEX", 8000),
    ("PCM_16", "WAV", 11025), ("PCM_16", "WAV", 16000), ("PCM_16", "WAVEX", 22050), ("PCM_16", "WAV", 44100),
    ("PCM_16", "WAVEX", 48000), ("PCM_24", "WAV", 96000)])
def test_stereo_wav_of_every_flavour_gives_the_customer_channel(subtype, fmt, rate):
    data = wav_bytes(stereo_call(customer_side=1, rate=rate), rate, subtype, fmt)
    info, pcm = decode(data)
    assert (info.container, info.channels, info.rate, info.channel) == ("wav", 2, rate, 1)
    assert abs(len(pcm) - len(CALLER)) < 8000 * 0.05 + 10
    assert similarity(pcm, CALLER) > 0.9, "the caller's channel"
    assert similarity(pcm, AGENT) < 0.3, "not the agent's"


def test_pcm16_8k_stereo_is_the_customer_channel_exactly():
    frames = stereo_call(customer_side=1)
    _, pcm = decode(wav_bytes(frames, 8000))
    assert np.array_equal(pcm, frames[:, 1])
    _, left = decode(wav_bytes(frames, 8000), LEFT_MAP)       # another provider's map: the other side
    assert np.array_equal(left, frames[:, 0])


def test_mono_files_are_used_as_they_are_whatever_the_map():
    _, pcm = decode(wav_bytes(CALLER[:, None], 8000), NICE_MAP)
    assert np.array_equal(pcm, CALLER)


@pytest.mark.parametrize("rate,container", [(8000, "mp4"), (16000, "mp4"), (44100, "ipod")])
def test_aac_in_mp4_gives_the_customer_channel(rate, container):
    data = mp4_bytes(stereo_call(customer_side=1, rate=rate), rate, container=container)
    assert data[4:8] == b"ftyp"
    info, pcm = decode(data)
    assert (info.container, info.codec, info.channels, info.rate, info.channel) == ("mp4", "aac", 2, rate, 1)
    assert abs(info.duration_s - len(CALLER) / 8000) < 0.5
    assert abs(len(pcm) - len(CALLER)) < 0.3 * 8000
    assert similarity(pcm, CALLER) > 0.8
    assert similarity(pcm, AGENT) < 0.3


def test_three_channels_are_refused_rather_than_guessed():
    frames = np.stack([CALLER, CALLER, CALLER], axis=1)
    for data in (wav_bytes(frames, 8000), mp4_bytes(frames, 8000)):
        with pytest.raises(ConnectorError) as ei:
            RecordingSource(NICE_MAP).probe(data)
        assert ei.value.code == "UNSUPPORTED_CHANNEL_LAYOUT"


def test_unsupported_and_broken_media_get_stable_codes():
    cases = [(b"OggS" + b"\0" * 60, "", "UNSUPPORTED_MEDIA"),
             (b"ID3\x04" + b"\0" * 60, "call.mp3", "UNSUPPORTED_MEDIA"),
             (b"RIFF\x10\x00\x00\x00WAVEjunk", "", "BAD_AUDIO"),
             (b"not audio" * 10, "a.wav", "BAD_AUDIO"),                   # the name picks the decoder
             (b"\x00\x00\x00\x18ftypmp42" + b"\0" * 20, "", "BAD_AUDIO"),
             (mp4_bytes(two_channels(CALLER, AGENT), 8000)[:3000], "", "BAD_AUDIO"),     # cut short
             (wav_bytes(two_channels(CALLER, AGENT), 8000)[:44] + b"\0" * 3, "", None)]  # empty data: no error
    for data, name, code in cases:
        if code is None:
            _, pcm = decode(data, filename=name)
            assert len(pcm) == 0
            continue
        with pytest.raises(ConnectorError) as ei:
            decode(data, filename=name)
        assert ei.value.code == code, (data[:12], ei.value.message)
        assert "0x" not in ei.value.message


def test_mp4_audio_in_another_codec_is_refused():
    data = mp4_bytes(two_channels(CALLER, AGENT), 48000, codec="ac3")
    with pytest.raises(ConnectorError) as ei:
        RecordingSource(NICE_MAP).probe(data)
    assert ei.value.code == "UNSUPPORTED_MEDIA" and "ac3" in ei.value.message


def test_a_rate_outside_the_list_is_refused():
    with pytest.raises(ConnectorError) as ei:
        RecordingSource(NICE_MAP).probe(wav_bytes(two_channels(CALLER, AGENT), 8001))
    assert ei.value.code == "BAD_SAMPLE_RATE"


def test_sniffing_goes_by_bytes_before_names():
    wav = wav_bytes(CALLER[:, None], 8000)
    assert sniff(wav, "recording.mp4") == "wav"
    assert sniff(mp4_bytes(CALLER[:, None], 8000), "recording.wav") == "mp4"


def test_channel_maps_name_exactly_one_customer():
    for bad in (("agent", "agent"), ("customer", "customer"), ()):
        with pytest.raises(ValueError):
            ChannelMap(bad)
    from gateway.infra.config import ConfigError, load_settings
    with pytest.raises(ConfigError) as ei:
        load_settings(environ={"VBGW_RECORDINGS__CHANNEL_MAPS": '{"NICE": ["agent", "agent"]}'})
    assert "channel_maps.NICE" in str(ei.value)
    s = load_settings(environ={"VBGW_RECORDINGS__CHANNEL_MAPS": '{"nice": ["customer", "agent"]}'})
    assert s.recordings.channel_map("NICE_IN_CONTACT").roles == ("customer", "agent")
    assert s.recordings.channel_map("GENESYS").roles == ("customer", "agent")       # defaults kept
    assert s.recordings.channel_map("SOMETHING_ELSE") == s.recordings.channel_map(None)


def test_upsampled_speech_helper_is_sane():
    assert len(at_rate(CALLER, 44100)) == pytest.approx(len(CALLER) * 44100 / 8000, abs=2)
