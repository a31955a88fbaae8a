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
