"""The NICE CXone connector as a pure state machine (connectors/nice.py): the initial message in
its tolerated spellings, audio in its three shapes, the in-band ends, and a clear error with a
close code for everything it cannot use. The serve loop runs over a fake socket: what it tells
the call (finish, end and its resume window) for each way a socket ends."""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from connectors.base import ConnectorError, Frame, WireMessage
from connectors.codecs import encode_mulaw
from connectors.nice import (
    AudioFormat, Handshake, NiceConfig, NiceStream, State, StreamEnd, parse_handshake, serve,
)

TONE = (3000 * np.sin(np.arange(800) / 8000 * 2 * np.pi * 440)).astype(np.int16)


def handshake(**kw) -> str:
    msg = {"streamPerspective": "TX", "contactId": "700123456789"}
    msg.update(kw)
    return json.dumps(msg)


def started(text: str | None = None) -> NiceStream:
    s = NiceStream(max_frame_bytes=4096)
    assert isinstance(s.on_message("text", text or handshake()), Handshake)
    return s


def refused(code: str, close_code: int, *messages: tuple[str, str | bytes], stream: NiceStream | None = None):
    s = stream or NiceStream(max_frame_bytes=4096)
    with pytest.raises(ConnectorError) as exc:
        for kind, data in messages:
            s.on_message(kind, data)  # type: ignore[arg-type]
    assert exc.value.code == code and exc.value.close_code == close_code, exc.value.message
    return exc.value


# -- the initial message ------------------------------------------------------------------------
def test_documented_minimum_defaults_to_mulaw_8k_mono():
    hs = parse_handshake('{"streamPerspective": "TX", "contactId": "42"}')
    assert (hs.perspective, hs.contact_id, hs.audio, hs.script_params) == ("TX", "42", AudioFormat("mulaw", 8000), {})
    assert hs.channel == "customer" and not hs.mixed
    assert json.loads(hs.ack()) == {"status": "ok", "streamPerspective": "TX", "contactId": "42",
                                    "encoding": "mulaw", "sampleRate": 8000}


@pytest.mark.parametrize("key", ["contactId", "ContactID", "CONTACTID", "masterContactId", "master_contact_id",
                                 "acdCallId", "ACD-Call-Id", "masterId"])
def test_contact_id_aliases_any_case(key):
    hs = parse_handshake(json.dumps({"STREAMPERSPECTIVE": "rx", key: 700123456789}))
    assert hs.contact_id == "700123456789" and hs.perspective == "RX" and hs.channel == "agent"


def test_mix_is_the_customer_channel_flagged_mixed():
    hs = parse_handshake(handshake(streamPerspective="Mix"))
    assert hs.perspective == "MIX" and hs.channel == "customer" and hs.mixed


def test_script_params_object_or_json_string_become_strings():
    payload = {"Ani": "+15558001234", "user_id": "cust-1", "n": 5, "vip": True, "nested": {"x": 1}, "empty": ""}
    for params in (payload, json.dumps(payload)):
        hs = parse_handshake(handshake(scriptParams=params))
        assert hs.script_params == {"Ani": "+15558001234", "user_id": "cust-1", "n": "5", "vip": "true"}
    # The Studio variable name of the brief, and the contact id inside the parameters only.
    hs = parse_handshake(json.dumps({"streamPerspective": "TX", "customPayload": {"ContactId": "9"}}))
    assert hs.contact_id == "9"


def test_audio_description_and_informational_fields():
    hs = parse_handshake(handshake(audio={"Encoding": "L16", "SampleRate": 16000, "channels": 1},
                                   agentId=271828, businessUnit="4606881", ANI="+1555"))
    assert hs.audio == AudioFormat("l16", 16000)
    assert (hs.agent_id, hs.business_unit, hs.ani) == ("271828", "4606881", "+1555")
    for name in ("PCMU", "audio/x-mulaw", "G711 μlaw", "MULAW", "ulaw"):
        assert parse_handshake(handshake(mediaFormat={"encoding": name})).audio.encoding == "mulaw", name
    assert parse_handshake(handshake(audio={"codec": "PCMA"})).audio.encoding == "alaw"


def test_a_wrapped_initial_message_is_looked_into():
    hs = parse_handshake(json.dumps({"event": "start", "start": {"streamPerspective": "TX", "contactId": "5"}}))
    assert hs.contact_id == "5"


@pytest.mark.parametrize("text,code,close_code", [
    ("not json", "BAD_HANDSHAKE", 1007),
    ("[1, 2]", "BAD_HANDSHAKE", 1007),
    ('{"contactId": "1"}', "BAD_HANDSHAKE", 1007),
    ('{"streamPerspective": "LEFT", "contactId": "1"}', "BAD_PERSPECTIVE", 1007),
    ('{"streamPerspective": "TX"}', "BAD_HANDSHAKE", 1007),
    ('{"streamPerspective": "TX", "contactId": ""}', "BAD_HANDSHAKE", 1007),
    ('{"streamPerspective": "TX", "contactId": {"id": 1}}', "BAD_HANDSHAKE", 1007),
    ('{"streamPerspective": "TX", "contactId": "a\\u0000b"}', "BAD_HANDSHAKE", 1007),
    ('{"streamPerspective": "TX", "contactId": "1", "scriptParams": "Ani=5"}', "BAD_SCRIPT_PARAMS", 1007),
    ('{"streamPerspective": "TX", "contactId": "1", "scriptParams": [1]}', "BAD_SCRIPT_PARAMS", 1007),
    ('{"streamPerspective": "TX", "contactId": "1", "audio": {"encoding": "opus"}}', "UNSUPPORTED_AUDIO", 1003),
    ('{"streamPerspective": "TX", "contactId": "1", "audio": {"sampleRate": 7000}}', "UNSUPPORTED_AUDIO", 1003),
    ('{"streamPerspective": "TX", "contactId": "1", "audio": {"channels": 2}}', "UNSUPPORTED_AUDIO", 1003),
    ('{"streamPerspective": "TX", "contactId": "1", "audio": 5}', "BAD_AUDIO_FORMAT", 1007),
    ("[" * 100 + "]" * 100, "BAD_HANDSHAKE", 1007),
])
def test_a_bad_initial_message_is_a_clear_error(text, code, close_code):
    err = refused(code, close_code, ("text", text))
    assert err.message and "Traceback" not in err.message


def test_one_connected_greeting_before_the_handshake_is_tolerated():
    s = NiceStream()
    assert s.on_message("text", '{"event": "connected", "protocol": "Call"}') is None
    assert isinstance(s.on_message("text", handshake()), Handshake)
    again = NiceStream()
    again.on_message("text", '{"event": "connected"}')
    refused("BAD_HANDSHAKE", 1007, ("text", '{"event": "connected"}'), stream=again)


def test_audio_or_an_empty_message_before_the_handshake():
    refused("AUDIO_BEFORE_HANDSHAKE", 1008, ("binary", b"\xff" * 160))
    refused("NO_HANDSHAKE", 1008, ("text", ""))


# -- audio --------------------------------------------------------------------------------------
def test_raw_mulaw_of_any_length_in_order():
    s = started()
    payload = encode_mulaw(TONE)
    frames = [s.on_message("binary", payload[i:i + n]) for i, n in ((0, 1), (1, 159), (160, 333), (493, 307))]
    assert all(isinstance(f, Frame) and f.channel == "customer" and f.dialog_id == "700123456789" for f in frames)
    assert [f.position for f in frames] == [0, 1, 160, 493]
    joined = np.concatenate([f.samples for f in frames])
    assert len(joined) == 800 and np.abs(joined.astype(int) - TONE).max() < 200   # G.711 error only


def test_json_media_and_audio_messages():
    s = started()
    b64 = base64.b64encode(encode_mulaw(TONE[:160])).decode()
    f1 = s.on_message("text", json.dumps({"event": "media", "media": {"track": "inbound", "payload": b64}}))
    f2 = s.on_message("text", json.dumps({"audio": b64}))
    assert isinstance(f1, Frame) and isinstance(f2, Frame) and (f1.position, f2.position) == (0, 160)
    for ignored in ({"event": "connected"}, {"event": "mark"}, json.loads(handshake())):
        assert s.on_message("text", json.dumps(ignored)) is None
    assert s.ignored == 3


def test_l16_at_16k_is_resampled_and_a_split_sample_kept():
    s = started(handshake(audio={"encoding": "L16", "sampleRate": 16000}))
    pcm = np.repeat(TONE, 2).astype("<i2").tobytes()
    out = [s.on_message("binary", pcm[:321]), s.on_message("binary", pcm[321:])]
    total = sum(len(f.samples) for f in out if isinstance(f, Frame))
    assert abs(total - 800) <= 64            # resampler delay only


def test_bad_audio_messages():
    refused("BAD_BASE64", 1007, ("text", '{"audio": "***"}'), stream=started())
    refused("BAD_MESSAGE", 1007, ("text", '{"event": "media", "media": {}}'), stream=started())
    refused("BAD_MESSAGE", 1007, ("text", "AAAA"), stream=started())
    refused("FRAME_TOO_LARGE", 1009, ("binary", b"\xff" * 5000), stream=started())


@pytest.mark.parametrize("end", [("text", ""), ("binary", b""), ("text", '{"event": "stop"}'),
                                 ("text", '{"Event": "STOP", "stop": {}}')])
def test_in_band_ends(end):
    s = started()
    assert isinstance(s.on_message(*end), StreamEnd) and s.state is State.ENDED
    refused("STREAM_ENDED", 1008, ("binary", b"\xff"), stream=s)


# -- the serve loop -----------------------------------------------------------------------------
class FakeWire:
    def __init__(self, *messages: WireMessage, hang: bool = False):
        self.inbox = list(messages)
        self.hang = hang
        self.sent: list[dict] = []
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    async def receive(self, timeout=None) -> WireMessage:
        if self.inbox:
            return self.inbox.pop(0)
        if self.hang:
            await asyncio.sleep(timeout if timeout is not None else 3600)
            raise asyncio.TimeoutError
        return WireMessage("close")

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        if self.close_code is None:
            self.close_code = code


class FakePort:
    def __init__(self, dialog_id: str):
        self.dialog_id = dialog_id
        self.frames: list[Frame] = []
        self.finished = 0
        self.ended: tuple[str, float] | None = None

    def push(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def wait_capacity(self) -> None:
        return None

    def report(self, status: str, reason: str) -> None:
        raise AssertionError("NICE reports no statuses of its own")

    async def finish(self) -> None:
        self.finished += 1

    async def end(self, reason: str, resume_within_s: float = 0.0) -> None:
        assert self.ended is None
        self.ended = (reason, resume_within_s)


class FakeOpener:
    def __init__(self, refuse: ConnectorError | None = None):
        self.refuse = refuse
        self.port: FakePort | None = None
        self.outcomes: list[str] = []

    async def attach(self, hs: Handshake) -> FakePort:
        if self.refuse:
            raise self.refuse
        self.port = FakePort(hs.contact_id)
        return self.port

    def ended(self, outcome: str) -> None:
        self.outcomes.append(outcome)


CFG = NiceConfig(resume_idle_s=30, handshake_timeout_s=0.2)


async def run(*messages: WireMessage, opener: FakeOpener | None = None, hang: bool = False):
    wire, op = FakeWire(*messages, hang=hang), opener or FakeOpener()
    outcome = await serve(wire, op, CFG)
    assert op.outcomes == [outcome]
    return outcome, wire, op


async def test_a_close_keeps_the_call_open_for_a_resume():
    outcome, wire, op = await run(WireMessage("text", handshake()), WireMessage("binary", encode_mulaw(TONE)))
    assert outcome == "completed" and wire.sent[0]["status"] == "ok"
    assert op.port and len(op.port.frames) == 1 and op.port.finished == 0
    assert op.port.ended == ("completed", 30)


async def test_a_stop_publishes_final_results_and_ends_at_once():
    outcome, wire, op = await run(WireMessage("text", handshake()), WireMessage("binary", encode_mulaw(TONE)),
                                  WireMessage("text", '{"event":"stop"}'))
    assert outcome == "completed" and op.port and op.port.finished == 1 and op.port.ended == ("completed", 0)
    assert wire.sent[-1] == {"status": "ended", "contactId": "700123456789"} and wire.close_code == 1000


async def test_a_socket_error_is_a_drop_the_call_may_resume_from():
    outcome, _, op = await run(WireMessage("text", handshake()), WireMessage("error", "reset"))
    assert outcome == "disconnected" and op.port and op.port.ended == ("disconnected", 30)


async def test_a_protocol_error_ends_the_socket_not_the_call():
    outcome, wire, op = await run(WireMessage("text", handshake()), WireMessage("text", '{"audio": "%%"}'))
    assert outcome == "BAD_BASE64" and wire.close_code == 1007
    assert wire.sent[-1]["status"] == "error" and wire.sent[-1]["error"]["code"] == "BAD_BASE64"
    assert op.port and op.port.ended == ("disconnected", 30)


async def test_a_bad_handshake_attaches_nothing():
    outcome, wire, op = await run(WireMessage("text", '{"streamPerspective": "TX"}'))
    assert outcome == "BAD_HANDSHAKE" and wire.close_code == 1007 and op.port is None
    assert wire.sent == [{"status": "error", "error": {"code": "BAD_HANDSHAKE", "message": wire.sent[0]["error"]["message"]}}]


async def test_no_handshake_in_time():
    outcome, wire, op = await run(hang=True)
    assert outcome == "HANDSHAKE_TIMEOUT" and wire.close_code == 1008 and op.port is None


async def test_a_refused_attach_is_an_error_message_and_a_close():
    busy = ConnectorError("STREAM_BUSY", "TX of this contact is already streaming", 1013)
    outcome, wire, op = await run(WireMessage("text", handshake()), opener=FakeOpener(busy))
    assert outcome == "STREAM_BUSY" and wire.close_code == 1013 and wire.sent[0]["error"]["code"] == "STREAM_BUSY"
