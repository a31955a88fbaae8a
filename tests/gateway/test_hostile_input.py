"""Hostile and malformed input on the OCP surfaces (issue #10 §2, issue #12 item 6): every case
here answered 500 INTERNAL (or wrote an HTTP 500 into an upgraded WebSocket) before the fix.
Each must get a 4xx with a stable code in the API's envelope, and nothing may disturb the
gateway: the last check of every test is that it still answers."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
import websockets

B = "vbgwBoundary"
MP = {"Content-Type": f"multipart/form-data; boundary={B}"}
REPR = re.compile(r"object at 0x[0-9a-f]+|<[a-zA-Z_.]+ object")


@pytest.fixture
def settings(settings):
    settings.server.first_message_timeout_s = 1.0
    return settings


def _part(name: str, value: bytes, extra: str = "") -> bytes:
    return f"--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n{extra}\r\n".encode() + value + b"\r\n"


MALFORMED_FORMS = [
    ({"Content-Type": "multipart/form-data"}, b"--x\r\n\r\n--x--\r\n"),                 # no boundary
    (MP, b"this is not multipart at all"),                                               # no starting boundary
    (MP, _part("biokeys[user_id]", b"u1")[:-2]),                                         # unterminated body
    (MP, f"--{B}\r\n".encode() + b"X-Filler: 1\r\n" * 20000
     + b"Content-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n" + f"--{B}--\r\n".encode()),  # 20,000 part headers
    (MP, _part("outer", b"--in\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nv\r\n--in--",
               "Content-Type: multipart/mixed; boundary=in\r\n") + f"--{B}--\r\n".encode()),   # nested multipart
    (MP, _part("biokeys[user_id]", b"\xff\xfe\xfd") + f"--{B}--\r\n".encode()),         # a field that is not UTF-8
]


def assert_envelope(status: int, body, want_status: int, code: str | None = None) -> None:
    assert status == want_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert not REPR.search(body["error"]["message"]), body


async def _still_healthy(gw) -> None:
    status, body = await gw.call("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})


async def test_malformed_multipart_is_400_on_every_batch_enrol_path(gateway):
    gw = gateway
    tok = await gw.token("mp-call")
    for path in ("/api/enroll", "/agent-vb-mw/api/enroll"):
        for auth in (tok, gw.pat):
            for headers, body in MALFORMED_FORMS:
                status, answer = await gw.call("POST", path, auth, headers=dict(headers), data=body)
                assert_envelope(status, answer, 400, "MALFORMED_MULTIPART")
    await _still_healthy(gw)


async def test_json_bodies_that_are_not_utf8_too_deep_or_too_long_are_400(gateway):
    gw = gateway
    tok = await gw.token("json-call")
    h = {"Content-Type": "application/json"}
    for path in ("/enrol", "/users/optin", "/users/search", "/users/optout"):
        for body, code in ((b'{"user_id": "\xff\xfe"}', "MALFORMED_JSON"), (b"\xfe\xff\x00{", "MALFORMED_JSON"),
                           (b"[" * 30000, "JSON_TOO_DEEP"), (b'{"a": ' * 500 + b"1" + b"}" * 500, "JSON_TOO_DEEP"),
                           (b"1" * 60000, "MALFORMED_JSON"), (b'{"user_id": ' + b"9" * 5000 + b"}", "MALFORMED_JSON")):
            status, answer = await gw.call("POST", path, tok, headers=h, data=body)
            assert_envelope(status, answer, 400, code)
    # Deep nesting inside customProperties of a token request (once a RecursionError).
    deep = {"agentId": "a", "agentSkill": "s", "masterId": "deep", "tenantId": "acme", "vbProfile": "retail",
            "ccaasProvider": "GENESYS", "customProperties": {"Ani": "@"}}
    for depth in (40, 990, 30000):
        raw = json.dumps(deep).replace('"@"', "[" * depth + "]" * depth)
        status, answer = await gw.call("POST", "/api/token/", gw.pat, headers=h, data=raw.encode())
        assert_envelope(status, answer, 400, "JSON_TOO_DEEP")
    await _still_healthy(gw)


async def test_oversized_and_cut_short_bodies(gateway):
    gw = gateway
    tok = await gw.token("big-call")
    limit = gw.settings.server.max_body_bytes
    form = _part("biokeys[user_id]", b"u1") + _part("file", b"\0" * (limit + 10)) + f"--{B}--\r\n".encode()
    status, answer = await gw.call("POST", "/api/enroll", tok, headers=MP, data=form)
    assert_envelope(status, answer, 413, "BODY_TOO_LARGE")
    assert str(limit) in answer["error"]["message"]
    # A chunked body with a broken chunk header: the body cannot be read.
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    writer.write(f"POST /users/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                 "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"bi\r\nzz\r\n".encode())
    head = (await asyncio.wait_for(reader.read(200), 30)).decode(errors="replace")
    writer.close()
    assert head.split(" ")[1] == "400", head
    await _still_healthy(gw)


async def test_error_messages_carry_no_python_reprs(gateway):
    gw = gateway
    tok = await gw.token("repr-call")
    for junk in (b"RIFF\x10\x00\x00\x00WAVEjunkjunk", b"not audio at all" * 10):
        form = _part("biokeys[user_id]", b"u1") + \
            f"--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n".encode() + junk + \
            f"\r\n--{B}--\r\n".encode()
        status, answer = await gw.call("POST", "/api/enroll", tok, headers=MP, data=form)
        assert_envelope(status, answer, 415, "BAD_AUDIO")
        assert "not a readable WAV file" in answer["error"]["message"]


async def test_405_answers_name_the_allowed_methods(gateway):
    gw = gateway
    r = await gw.http.delete(f"{gw.url}/users/search")
    assert r.status == 405 and "POST" in r.headers["Allow"], r.headers
    assert (await r.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


# -- WebSockets -----------------------------------------------------------------------------
async def _error_then_close(ws) -> tuple[dict, int]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
    with pytest.raises(websockets.ConnectionClosed) as exc:
        await asyncio.wait_for(ws.recv(), 30)
    return msg, exc.value.rcvd.code


async def test_direct_stream_deeply_nested_first_message_is_a_protocol_error(gateway):
    gw = gateway
    for depth in (40, 990, 30000):
        tok = await gw.token(f"nest-{depth}")
        async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}", max_size=None) as ws:
            await ws.send("[" * depth + "]" * depth)
            msg, code = await _error_then_close(ws)
        assert msg["error"]["code"] == "BAD_CONFIG" and code == 1007, msg
        assert "nested deeper" in msg["error"]["message"]
    await _still_healthy(gw)


async def test_direct_stream_frames_over_the_reader_limit_get_the_documented_error(gateway):
    gw = gateway
    answers = []
    for size in (70_000, 200_000, 2_000_000):
        tok = await gw.token(f"big-{size}")
        async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}", max_size=None) as ws:
            await ws.send(json.dumps({"encoding": "l16", "sample_rate": 8000, "dialog_id": f"big-{size}"}))
            assert json.loads(await ws.recv())["event"] == "session_started"
            await ws.send(b"\0" * size)
            msg, code = await _error_then_close(ws)
        answers.append((msg["error"]["code"], code))
    assert answers == [("FRAME_TOO_LARGE", 1009)] * 3


async def test_direct_stream_without_a_recognition_config_is_timed_out(gateway):
    gw = gateway                       # server.first_message_timeout_s = 1 (fixture above)
    tok = await gw.token("silent-call")
    async with websockets.connect(f"{gw.ws_url}/agent-vb-mw/stream?token={tok}") as ws:
        msg, code = await _error_then_close(ws)
    assert (msg["error"]["code"], code) == ("CONFIG_TIMEOUT", 1008)
    # The dialog is free again for a real stream.
    out = await gw.stream(tok, "silent-call", b"\0\0" * 1600, encoding="l16")
    assert out[-1]["event"] == "session_ended"
