import numpy as np
import pytest

from connectors.base import ConnectorError
from connectors.codecs import StreamResampler, decode, read_wav
from connectors.ocp_stream import OcpStreamDecoder


@pytest.mark.parametrize("rate", [11025, 16000, 22050, 44100, 48000])
def test_resampler_is_chunk_exact_and_anti_aliased(rate):
    t = np.arange(rate) / rate
    alias = 6500 if rate > 13000 else 5200       # above 4 kHz: must not fold into the band
    x = (8000 * np.sin(2 * np.pi * 440 * t) + 6000 * np.sin(2 * np.pi * alias * t)).astype(np.int16)
    whole = StreamResampler(rate).process(x)
    r = StreamResampler(rate)
    parts = np.concatenate([r.process(x[i:i + 331]) for i in range(0, len(x), 331)])
    assert np.array_equal(whole, parts)
    assert abs(len(whole) - 8000) <= 1
    spec = np.abs(np.fft.rfft(whole[-4000:])) / 2000
    assert spec[220] > 7000            # 440 Hz kept (bin = 2 Hz)
    assert spec[(8000 - alias) // 2] < 50   # the alias is gone


def test_decoders():
    assert decode(b"\x01\x00\xff\xff", "l16").tolist() == [1, -1]
    assert len(decode(b"\xff" * 160, "mulaw")) == 160
    assert len(decode(b"\xd5" * 160, "alaw")) == 160
    with pytest.raises(ConnectorError) as e:
        decode(b"\x00" * 3, "l16")
    assert e.value.code == "ODD_LENGTH"


def test_read_wav_rejects_junk():
    with pytest.raises(ConnectorError) as e:
        read_wav(b"RIFF1234WAVEjunk")
    assert e.value.code == "BAD_AUDIO"


def test_decoder_state_machine_positions():
    d = OcpStreamDecoder("d1", 65536)
    d.on_message("text", '{"encoding":"l16","sample_rate":8000,"dialog_id":"d1"}')
    f1 = d.on_message("binary", b"\x00\x00" * 160)
    f2 = d.on_message("binary", b"\x00\x00" * 80)
    assert (f1.position, f2.position) == (0, 160)
    assert d.on_message("binary", b"") is None
    with pytest.raises(ConnectorError):
        d.on_message("binary", b"\x00\x00")


def _wav(channels: np.ndarray, rate: int, subtype: str) -> bytes:
    import io

    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, channels, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize("rate, subtype", [(48000, "PCM_16"), (16000, "FLOAT"), (8000, "ULAW")])
def test_the_tools_read_audio_exactly_as_uploads_are_decoded(tmp_path, rate, subtype):
    """One decoder and resampler for the product and the tools (issue #13): calibration and the
    benchmarks (tools.protocol.read_audio) get the samples an upload gets (iter_wav_8k, block by
    block), and a multi-channel file gives its first channel, never a mix of channels (the tools'
    old reader averaged the channels and resampled with another filter)."""
    from connectors.codecs import iter_wav_8k, read_wav_8k
    from tools.protocol import read_audio
    t = np.arange(rate * 3) / rate
    customer = 0.3 * np.sin(2 * np.pi * 440 * t)
    agent = 0.3 * np.sin(2 * np.pi * 1300 * t + 1.0)
    path = tmp_path / "call.wav"
    path.write_bytes(_wav(np.stack([customer, agent], axis=1), rate, subtype))
    upload = np.concatenate(list(iter_wav_8k(path.read_bytes(), 5.0, rates=(rate,))))
    tools = read_audio(path)
    assert tools.dtype == np.int16 and abs(len(tools) - 3 * 8000) <= 1
    assert np.array_equal(tools, upload)
    assert np.array_equal(read_wav_8k(path.read_bytes(), channel=1),
                          np.concatenate(list(iter_wav_8k(path.read_bytes(), 5.0, channel=1, rates=(rate,)))))
    spec = np.abs(np.fft.rfft(tools[8000:16000].astype(np.float64)))   # 1 Hz bins
    assert spec[440] > 50 * spec[1300]                                   # the customer alone
