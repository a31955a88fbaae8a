"""The AudioHook protocol state machine (connectors/audiohook.py), without sockets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from connectors.audiohook import (
    AudioHookError, AudioHookSession, CloseRequest, OpenRequest, State, choose_media, format_duration,
)
from connectors.codecs import encode_mulaw

SID = "4a2a0a7e-2c42-4d0b-9c7a-6d1e9f5e6de9"
ORG = "de66f978-0437-498c-83f7-c34b6326ae24"
CONV = "4a3ca747-22fa-4621-85e7-0dd094a4e269"
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}


class Client:
    def __init__(self, session: AudioHookSession):
        self.s = session
        self.seq = 0

    def send(self, type_: str, params: dict, position: float = 0.0):
        self.seq += 1
        return self.s.on_text(json.dumps({"version": "2", "id": SID, "type": type_, "seq": self.seq,
                                          "serverseq": self.s.server_seq, "position": format_duration(position),
                                          "parameters": params}))


def opened(offers=None) -> tuple[AudioHookSession, Client]:
    s = AudioHookSession(SID, ORG)
    c = Client(s)
    out = c.send("open", {"organizationId": ORG, "conversationId": CONV,
                          "participant": {"id": CONV, "ani": "+1", "aniName": "", "dnis": ""},
                          "media": offers or [STEREO]})
    assert isinstance(out.event, OpenRequest) and out.event.problem is None
    msg = json.loads(s.accept(out.event))
    assert msg["type"] == "opened" and msg["seq"] == 1 and msg["clientseq"] == 1 and "position" not in msg
    return s, c


def stereo_frame(ext: np.ndarray, internal: np.ndarray) -> bytes:
    return encode_mulaw(np.stack([ext, internal], axis=1).reshape(-1))


def test_stereo_split_and_positions():
    s, c = opened()
    ext, internal = np.full(1600, 1000, np.int16), np.full(1600, -8000, np.int16)
    frames = s.on_audio(stereo_frame(ext, internal), CONV)
    assert [(f.channel, f.position, len(f.samples)) for f in frames] == [("customer", 0, 1600), ("agent", 0, 1600)]
    assert abs(int(frames[0].samples.mean()) - 1000) < 50 and abs(int(frames[1].samples.mean()) + 8000) < 300
    # discarded: the timeline jumps by the discarded audio.
    out = c.send("discarded", {"start": "PT0.2S", "discarded": "PT2S"}, position=2.2)
    assert out.event.type == "discarded" and s.samples == 1600 + 16000
    frames = s.on_audio(stereo_frame(ext, internal), CONV)
    assert frames[0].position == 17600
    assert s.position_drift_max == 0


def test_pause_resume_and_audio_while_paused():
    s, c = opened()
    assert json.loads(s.pause())["type"] == "pause"              # server-initiated pause
    c.send("paused", {})
    assert s.state is State.PAUSED
    with pytest.raises(AudioHookError) as exc:
        s.on_audio(b"\xff" * 3200, CONV)
    assert exc.value.code == "AUDIO_NOT_ALLOWED" and "PAUSED" in exc.value.message
    assert json.loads(s.resume())["type"] == "resume"
    c.send("resumed", {"start": "PT0S", "discarded": "PT1.5S"}, position=1.5)
    assert s.state is State.ACTIVE and s.samples == 12000
    assert s.on_audio(b"\xff" * 3200, CONV)[0].position == 12000


def test_ping_pong_clientseq_and_close():
    s, c = opened()
    out = c.send("ping", {})
    pong = json.loads(out.replies[0])
    assert pong["type"] == "pong" and pong["clientseq"] == c.seq and pong["seq"] == 2
    out = c.send("close", {"reason": "end"})
    assert isinstance(out.event, CloseRequest) and s.state is State.CLOSING
    assert s.on_audio(b"\xff" * 3200, CONV) == []                 # audio after close is dropped
    assert json.loads(s.closed())["type"] == "closed" and s.state is State.CLOSED


def test_errors_then_close_still_answered():
    s, c = opened()
    c.seq += 1                                                    # a gap
    with pytest.raises(AudioHookError) as exc:
        c.send("ping", {})
    assert exc.value.code == "SEQ_GAP"
    msg = json.loads(s.disconnect("error", "Client Error: " + "x" * 5000))
    assert msg["type"] == "disconnect" and len(msg["parameters"]["info"]) <= 1024
    assert s.disconnect("error", "again") is None                 # signalled once only
    assert s.on_audio(b"\xff", CONV) == []
    assert isinstance(c.send("close", {"reason": "disconnect"}).event, CloseRequest)


@pytest.mark.parametrize("text, code", [
    ("[]", "INVALID_MESSAGE"), ('{"version": "1"}', "INVALID_MESSAGE"), ("{", "MALFORMED_JSON"),
])
def test_invalid_messages(text, code):
    with pytest.raises(AudioHookError) as exc:
        AudioHookSession(SID, ORG).on_text(text)
    assert exc.value.code == code


def test_frame_checks():
    s, _ = opened([{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}])
    for data, code in ((b"\x00" * 3, "PARTIAL_SAMPLE"), (b"\x00" * 70000, "FRAME_TOO_LARGE")):
        with pytest.raises(AudioHookError) as exc:
            s.on_audio(data, CONV)
        assert exc.value.code == code
    pcm = np.arange(-800, 800, dtype=np.int16)
    assert np.array_equal(s.on_audio(pcm.astype("<i2").tobytes(), CONV)[0].samples, pcm)   # L16 little-endian


def test_choose_media_and_probe():
    mono = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
    l16 = {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 8000}
    assert choose_media([mono, l16, STEREO])[0] is STEREO
    assert choose_media([mono, l16])[0] is l16
    assert choose_media([{"format": "opus"}, mono])[0] is mono
    internal = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
    assert choose_media([internal, mono])[0] is mono               # the customer's channel first
    assert choose_media([internal])[0] is internal                 # accepted: the agent side alone
    assert choose_media([{"type": "audio", "format": "PCMA", "channels": ["external"], "rate": 8000}]) is None
    s = AudioHookSession(SID, ORG)
    null = "00000000-0000-0000-0000-000000000000"
    out = Client(s).send("open", {"organizationId": ORG, "conversationId": null,
                                  "participant": {"id": null, "ani": "", "aniName": "", "dnis": ""}, "media": []})
    assert out.event.probe and out.event.problem is None and out.event.offer is None
    assert json.loads(s.accept(out.event))["parameters"]["media"] == []


def test_opens_the_reference_server_accepts_are_accepted():
    """Issue #11: every `open` Genesys' reference server answers with `opened` is answered with
    `opened` here too: long participant strings, many offers, no offer at all, a client error
    message of any length, and `supportedLanguages` asked for (answered, empty)."""
    s = AudioHookSession(SID, ORG)
    offers = [{"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}] * 40 + [STEREO]
    out = Client(s).send("open", {"organizationId": ORG, "conversationId": CONV, "supportedLanguages": True,
                                  "participant": {"id": CONV, "ani": "+1" * 300, "aniName": "N" * 2000, "dnis": ""},
                                  "media": offers})
    assert out.event.problem is None and out.event.offer == STEREO
    params = json.loads(s.accept(out.event))["parameters"]
    assert params["media"] == [STEREO] and params["supportedLanguages"] == []
    assert out.event.customer_audio

    s = AudioHookSession(SID, ORG)
    c = Client(s)
    out = c.send("open", {"organizationId": ORG, "conversationId": CONV,
                          "participant": {"id": CONV, "ani": "", "aniName": "", "dnis": ""}, "media": []})
    assert out.event.problem is None and not out.event.probe and not out.event.customer_audio
    params = json.loads(s.accept(out.event))["parameters"]
    assert params == {"media": [], "startPaused": False}                 # not asked: no language list
    out = c.send("error", {"code": 500, "message": "x" * 10000})
    assert out.event.type == "error" and s.state is State.ACTIVE
