"""Message fuzzing of the NICE CXone connector (connectors.nice.NiceStream), in process and
driven by hypothesis, as tests/fuzz does for the other WebSocket protocols: any sequence of
messages either advances the protocol (a handshake, then frames in order, then at most one end)
or raises the protocol's own error with a code, a message and a close code; never anything else.
Derandomized (the same examples every run) and bounded in examples; no deadlines."""
from __future__ import annotations

import base64
import json

import numpy as np
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from connectors.base import ConnectorError, Frame
from connectors.nice import Handshake, NiceStream, StreamEnd

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
                max_examples=300)

json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | \
    st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
hostile_text = st.sampled_from(["", " ", "{", "[" * 3000, '{"a":' * 100 + "1" + "}" * 100, "1" * 6000, "null",
                                "[]", '"just a string"']) | st.text(max_size=40)


def _message():
    handshake = st.fixed_dictionaries(
        {"streamPerspective": st.sampled_from(["TX", "rx", "MIX", "LEFT", "", 3, None]),
         "contactId": st.sampled_from(["700123", 42, "", None, "a\u0000b", "x" * 300, {"id": 1}])},
        optional={"scriptParams": st.sampled_from([{"Ani": "+1555"}, '{"Ani": 5}', "Ani=5", [1], None, ""]),
                  "audio": st.sampled_from([{"encoding": "L16", "sampleRate": 16000}, {"encoding": "opus"},
                                            {"sampleRate": "x"}, {"channels": 2}, "PCMU", 5]),
                  "extra": json_values})
    b64 = st.binary(max_size=700).map(lambda b: base64.b64encode(b).decode())
    return st.one_of(
        handshake.map(lambda h: ("text", json.dumps(h))),
        b64.map(lambda p: ("text", json.dumps({"event": "media", "media": {"payload": p}}))),
        b64.map(lambda p: ("text", json.dumps({"audio": p}))),
        st.sampled_from([("text", '{"event": "stop"}'), ("text", '{"event": "media"}'), ("text", '{"audio": "%%"}'),
                         ("binary", b""), ("text", ""), ("binary", b"\xff" * 5000)]),
        json_values.map(lambda v: ("text", json.dumps(v))),
        hostile_text.map(lambda t: ("text", t)),
        st.binary(max_size=700).map(lambda b: ("binary", b)),
    )


@FUZZ
@given(messages=st.lists(_message(), max_size=10))
def test_any_message_sequence_advances_the_protocol_or_is_its_own_error(messages):
    stream = NiceStream(max_frame_bytes=4096)
    position, ended = 0, False
    for kind, data in messages:
        try:
            out = stream.on_message(kind, data)
        except ConnectorError as err:
            assert err.code and err.message and 1000 <= err.close_code < 5000
            assert "object at 0x" not in err.message and "Traceback" not in err.message
            return                                    # the server sends the error and closes
        assert not ended
        if isinstance(out, Handshake):
            assert position == 0 and out.perspective in ("TX", "RX", "MIX") and out.contact_id
        elif isinstance(out, Frame):
            assert stream.handshake is not None and out.dialog_id == stream.handshake.contact_id
            assert out.position == position and out.samples.dtype == np.int16 and len(out.samples)
            position += len(out.samples)
        elif isinstance(out, StreamEnd):
            ended = True
        else:
            assert out is None and stream.handshake is not None


def _outcomes(messages) -> set[str]:
    stream, seen = NiceStream(max_frame_bytes=4096), set()
    for kind, data in messages:
        try:
            out = stream.on_message(kind, data)
        except ConnectorError as err:
            return seen | {err.code}
        seen.add(type(out).__name__)
    return seen


def test_the_strategies_make_both_valid_and_invalid_sequences():
    """The fuzzer is only worth something if it reaches audio, the end and errors alike: for
    each, hypothesis finds a generated sequence that gets there."""
    search = settings(deadline=None, derandomize=True, database=None, max_examples=5000,
                      suppress_health_check=list(HealthCheck))
    for outcome in ("Handshake", "Frame", "StreamEnd", "BAD_HANDSHAKE"):
        found = find(st.lists(_message(), max_size=10), lambda m, o=outcome: o in _outcomes(m), settings=search)
        assert outcome in _outcomes(found)
