"""Message fuzzing of the WebSocket protocols (issue #10 §2), driven by hypothesis:

- the direct stream decoder (connectors.ocp_stream.OcpStreamDecoder) and the AudioHook session
  state machine (connectors.audiohook.AudioHookSession), in process: any sequence of messages
  either advances the protocol or raises the protocol's own error, never anything else, and
  whatever the server says back is a well-formed message of its protocol;
- the Aculab one-time WebSocket and the direct stream over a real socket against `vbgw serve`:
  any sequence of frames ends in one JSON answer of the protocol and a close, never a hang, an
  HTTP response inside the socket or a server error.

Derandomized (the same examples every run) and bounded in examples; no deadlines."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json

import aiohttp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.audiohook import (
    MAX_MESSAGE_CHARS, AudioHookError, AudioHookSession, OpenRequest, ServerEnvelope,
)
from connectors.base import ConnectorError, Frame
from connectors.ocp_stream import OcpStreamDecoder, RecognitionConfig

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | \
    st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
hostile_text = st.sampled_from(["", " ", "{", "[" * 3000, '{"a":' * 100 + "1" + "}" * 100, "1" * 6000,
                                "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "null", "[]",
                                '"just a string"']) | st.text(max_size=40)


# -- direct stream decoder (pure) -----------------------------------------------------------
DIALOG = "fuzz-dialog"


def _ocp_message():
    config = st.fixed_dictionaries(
        {"encoding": st.sampled_from(["l16", "mulaw", "alaw", "opus", 7]),
         "sample_rate": st.sampled_from([8000, 16000, 11025, 0, -1, "8000", 10**30]),
         "dialog_id": st.sampled_from([DIALOG, "", "other", None])},
        optional={"extra": json_values})
    return st.one_of(
        config.map(lambda c: ("text", json.dumps(c))),
        json_values.map(lambda v: ("text", json.dumps(v))),
        hostile_text.map(lambda t: ("text", t)),
        st.binary(max_size=700).map(lambda b: ("text", base64.b64encode(b).decode())),
        st.binary(max_size=700).map(lambda b: ("binary", b)),
        st.sampled_from([("binary", b""), ("text", ""), ("binary", b"\0" * 5000)]),
    )


@FUZZ
@given(messages=st.lists(_ocp_message(), max_size=10))
def test_direct_stream_decoder_answers_any_message_sequence_with_its_own_errors(messages):
    decoder = OcpStreamDecoder(DIALOG, max_frame_bytes=4096)
    position = 0
    for kind, data in messages:
        try:
            out = decoder.on_message(kind, data)
        except ConnectorError as err:
            assert err.code and err.message and 1000 <= err.close_code < 5000
            assert "object at 0x" not in err.message
            return                                    # the server sends the error and closes
        if isinstance(out, Frame):
            assert decoder.config is not None and out.position == position and out.samples.dtype == np.int16
            position += len(out.samples)
        elif isinstance(out, RecognitionConfig):
            assert out.dialog_id == DIALOG
        else:
            assert out is None and decoder.ended
            return


# -- AudioHook session (pure) ---------------------------------------------------------------
SESSION = "1f1e1d1c-1b1a-4918-8716-151413121110"
ORG = "0a0b0c0d-0e0f-4011-8213-141516171819"
UUIDS = st.sampled_from([SESSION, ORG, "00000000-0000-0000-0000-000000000000", "not-a-uuid"])
OPEN_PARAMS = st.fixed_dictionaries({
    "organizationId": UUIDS, "conversationId": UUIDS,
    "participant": st.fixed_dictionaries({"id": UUIDS, "ani": st.text(max_size=20)}) | json_values,
    "media": st.lists(st.fixed_dictionaries({
        "type": st.sampled_from(["audio", "video"]), "format": st.sampled_from(["PCMU", "L16", "opus"]),
        "channels": st.lists(st.sampled_from(["external", "internal", "x"]), max_size=3),
        "rate": st.sampled_from([8000, 16000])}) | json_values, max_size=3)},
    optional={"customConfig": json_values, "language": st.sampled_from(["en-US", "xx", 3])})
PARAMS = {"open": OPEN_PARAMS,
          "close": st.fixed_dictionaries({"reason": st.sampled_from(["end", "error", "disconnect", "bogus"])}),
          "ping": st.fixed_dictionaries({}, optional={"rtt": st.sampled_from(["PT0.1S", "bad"])}),
          "paused": st.just({}), "update": st.fixed_dictionaries({"language": st.sampled_from(["de-DE", 1])}),
          "resumed": st.fixed_dictionaries({"start": st.just("PT1S"), "discarded": st.sampled_from(["PT2S", "PTxS"])}),
          "discarded": st.fixed_dictionaries({"start": st.just("PT1S"), "discarded": st.sampled_from(["PT0.5S", "-1"])}),
          "error": st.fixed_dictionaries({"code": st.sampled_from([400, 500, 3, "x"]), "message": st.text(max_size=20)})}


@st.composite
def _audiohook_message(draw):
    kind = draw(st.sampled_from(["envelope"] * 4 + ["raw", "raw", "audio"]))
    if kind == "audio":
        return ("binary", draw(st.binary(max_size=1700)))
    if kind == "raw":
        return ("text", draw(hostile_text | json_values.map(json.dumps)))
    type_ = draw(st.sampled_from([*PARAMS, "bogus"]))
    return ("envelope", {
        "version": draw(st.sampled_from(["2", "2", "1", 2])), "id": draw(st.sampled_from([SESSION] * 5 + ["x"])),
        "type": type_, "seq": draw(st.sampled_from(["next"] * 5 + [0, 7, -1, "1"])),
        "serverseq": draw(st.sampled_from(["last"] * 4 + [99, -1])),
        "position": draw(st.sampled_from(["PT0S", "PT1.2S", "1.2"])),
        "parameters": draw(PARAMS.get(type_, json_values) | json_values)})


@FUZZ
@given(messages=st.lists(_audiohook_message(), max_size=12))
def test_audiohook_session_answers_any_message_sequence_with_protocol_messages(messages):
    session = AudioHookSession(SESSION, ORG, max_frame_bytes=1600)
    sent: list[str] = []
    for kind, data in messages:
        try:
            if kind == "binary":
                frames = session.on_audio(data, "d")
                assert all(f.samples.dtype == np.int16 for f in frames)
                continue
            if kind == "envelope":                    # fill in the numbering a real client keeps
                data = dict(data, seq=session.client_seq + 1 if data["seq"] == "next" else data["seq"],
                            serverseq=session.server_seq if data["serverseq"] == "last" else data["serverseq"])
                data = json.dumps(data)
            out = session.on_text(data)
            sent += out.replies
            if isinstance(out.event, OpenRequest) and out.event.problem is None:
                sent.append(session.accept(out.event))
        except AudioHookError as err:
            assert err.code and err.message.startswith(("Client Error", "Server error", "organizationId"))
            reply = session.disconnect(err.reason, err.message)
            if reply is not None:
                sent.append(reply)
    for text in sent:
        assert len(text) <= MAX_MESSAGE_CHARS
        msg = ServerEnvelope.model_validate_json(text)
        assert msg.id == SESSION


# -- over the wire: the Aculab one-time WebSocket and the direct stream ----------------------
def _frames():
    return st.lists(st.one_of(
        st.binary(max_size=3000).map(lambda b: ("binary", b)),
        hostile_text.map(lambda t: ("text", t)),
        json_values.map(lambda v: ("text", json.dumps(v))),
        st.just(("text", '{"event": "audio_sent"}')),
        st.sampled_from([("binary", b"\0" * 300_000), ("text", "[" * 30000)]),
    ), max_size=5)


async def _one_answer_then_close(ws: aiohttp.ClientWebSocketResponse, frames) -> list[dict]:
    """Send the frames while reading (a server that closes early is heard, not reset away),
    then read until the close: every answer must be a JSON text; the close must come."""
    answers: list[dict] = []

    async def read():
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            answers.append(json.loads(msg.data))
    reader = asyncio.create_task(read())
    for kind, data in frames:
        if ws.closed or reader.done():
            break
        try:
            await (ws.send_bytes(data) if kind == "binary" else ws.send_str(data))
        except (ConnectionError, RuntimeError):
            break
    async with asyncio.timeout(60):
        await reader
    return answers


@settings(FUZZ, max_examples=25)
@given(frames=_frames())
def test_aculab_one_time_websocket_answers_any_frames(gateway_process, frames):
    gw = gateway_process

    async def run():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.base}/voice_biometrics/v1/user/verify", params={"user_id": "fuzz-user"},
                                headers={"Authorization": gw.creds["user_group_key"]}) as r:
                assert r.status == 200, await r.text()
                url = (await r.json())["url"]
            async with http.ws_connect(url, max_msg_size=0) as ws:
                await ws.send_str('{"event": "audio_sent"}') if not frames else None
                return await _one_answer_then_close(ws, frames)

    answers = asyncio.run(run())
    assert len(answers) == 1, answers
    assert answers[0]["event"] in ("reject", "verify") and "object at 0x" not in json.dumps(answers[0])
    if answers[0]["event"] == "reject":
        # the WebSocket error table's client codes (50 bad request, 51 audio, 52 speech), never 60: a fault
        assert answers[0]["code"] in (50, 51, 52), answers


_STREAM_IDS = itertools.count()


@settings(FUZZ, max_examples=25)
@given(frames=_frames())
def test_direct_stream_answers_any_frames(gateway_process, frames):
    gw = gateway_process

    async def run(token: str):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{gw.port}/agent-vb-mw/stream?token={token}",
                                       max_msg_size=0) as ws:
                answers = await _one_answer_then_close(ws, [*frames, ("text", "")])
                return answers, ws.close_code

    answers, close_code = asyncio.run(run(gw.session_token(f"fuzz-stream-{next(_STREAM_IDS)}")))
    for a in answers:
        assert set(a) in ({"error"}, {"event", "dialog_id", "encoding", "sample_rate"}, {"event", "dialog_id"}), a
        if "error" in a:
            assert a["error"]["code"] != "INTERNAL", a
    assert close_code in (1000, 1003, 1007, 1008, 1009), (answers, close_code)


@pytest.mark.parametrize("unused", [None])
def test_fuzz_strategies_make_both_valid_and_invalid_messages(unused):
    """The message strategies reach the protocols' happy paths too (else the fuzzers above
    would only ever test the first parser error)."""
    decoder = OcpStreamDecoder(DIALOG, 4096)
    assert isinstance(decoder.on_message("text", json.dumps({"encoding": "l16", "dialog_id": DIALOG})),
                      RecognitionConfig)
    session = AudioHookSession(SESSION, ORG)
    out = session.on_text(json.dumps({"version": "2", "id": SESSION, "type": "open", "seq": 1, "serverseq": 0,
                                      "position": "PT0S", "parameters": {
                                          "organizationId": ORG, "conversationId": ORG,
                                          "participant": {"id": ORG}, "media": [{"type": "audio", "format": "PCMU",
                                                                                  "channels": ["external"],
                                                                                  "rate": 8000}]}}))
    assert isinstance(out.event, OpenRequest) and out.event.problem is None


@pytest.mark.parametrize("attempt", range(8))
def test_direct_stream_error_close_reaches_a_client_still_sending(gateway_process, attempt):
    """Found by the fuzzer above (about one run in five): a bad first message, then a 300 KB
    frame the client is already sending. The server answers the error and closes; closing the
    TCP connection with the frame's bytes unread sent a reset, and the client saw neither the
    error nor the close frame (1006). Every server-side close now lingers (stops writing, reads
    and discards until the peer closes, at most LINGER_S)."""
    gw = gateway_process

    async def run(token: str):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{gw.port}/agent-vb-mw/stream?token={token}",
                                       max_msg_size=0) as ws:
                answers = await _one_answer_then_close(ws, [("text", "NaN"), ("binary", bytes(300_000)),
                                                            ("text", "")])
                return answers, ws.close_code

    answers, close_code = asyncio.run(run(gw.session_token(f"fuzz-linger-{attempt}")))
    assert close_code in (1000, 1003, 1007, 1008, 1009), (answers, close_code)
    assert answers and "error" in answers[0], answers
