"""Hostile and malformed input on the Aculab Users API (issue #10 §2, issue #12 item 6): each
case answered 500 (or, for the one-time WebSocket, nothing for ever) before the fix; now a
4xx in the seed's envelope with vbgw's stable code."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
import websockets

from aculab_support import USERS, Client, assert_error, user_group_key, wav_file

B = "vbgwBoundary"
MP = {"Content-Type": f"multipart/form-data; boundary={B}"}
MAX_BODY = 200_000


@pytest.fixture
def settings(settings):
    settings.server.max_body_bytes = MAX_BODY
    settings.server.first_message_timeout_s = 1.0
    return settings


async def test_malformed_multipart_and_forms_are_400(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    src = f"--{B}\r\nContent-Disposition: form-data; name=\"Source1\"\r\n\r\n".encode()
    for action in ("register", "update", "verify"):
        for headers, body in (({"Content-Type": "multipart/form-data"}, b"--x\r\n"),     # no boundary
                              (MP, b"no boundary in here"),
                              (MP, src + b"RIFF...."),                                   # unterminated
                              (MP, f"--{B}\r\n".encode() + b"X: 1\r\n" * 20000 + b"\r\n\r\n"),
                              (MP, src.replace(b"\r\n\r\n", b"\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n")
                               + b"--i\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--i--\r\n"
                               + f"--{B}--\r\n".encode())):                            # nested
            status, answer = await cl.call("POST", action, params={"user_id": "u1"}, headers=dict(headers),
                                           data=body)
            assert_error(status, answer, 400, "MALFORMED_MULTIPART", action)
    # stats/exists/delete take a urlencoded body: one that is not UTF-8 is a bad request.
    for action in ("stats", "exists", "delete"):
        status, answer = await cl.call("POST", action, headers={"Content-Type": "application/x-www-form-urlencoded"},
                                       data=b"user_id=\xff\xfe")
        assert_error(status, answer, 400, "MALFORMED_BODY", action)


async def test_a_body_over_the_limit_is_413_body_too_large_in_the_seeds_envelope(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    big = b"\0" * (MAX_BODY + 1000)
    for method, kw in (("PUT", {"data": big}),
                       ("POST", {"headers": MP, "data": f"--{B}\r\nContent-Disposition: form-data; "
                                 "name=\"Source1\"\r\n\r\n".encode() + big + f"\r\n--{B}--\r\n".encode()})):
        status, answer = await cl.call(method, "register", params={"user_id": "u1"}, **kw)
        assert_error(status, answer, 413, "BODY_TOO_LARGE", "register")
        assert str(MAX_BODY) in answer["error"]["text"]


async def test_error_texts_carry_no_python_object_reprs(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    for junk in (b"RIFF\x10\x00\x00\x00WAVEjunk", b"junk" * 40):
        status, answer = await cl.put("register", "u1", junk)
        assert_error(status, answer, 415, "BAD_AUDIO", "register")
        assert not re.search(r"object at 0x|<_io\.", answer["error"]["text"]), answer


async def test_405_carries_allow(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    r = await gw.http.patch(f"{gw.url}{USERS}/register", headers={"Authorization": cl.auth})
    assert r.status == 405 and set(r.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST", "PUT"}
    r = await gw.http.put(f"{gw.url}{USERS}/stats", headers={"Authorization": cl.auth})
    assert r.status == 405 and set(r.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}


async def _ws_url(gw, cl, action="register") -> str:
    status, body = await cl.call("GET", action, params={"user_id": "u-ws"})
    assert status == 200, body
    return body["url"]


async def test_a_silent_one_time_websocket_is_timed_out(gateway):
    gw = gateway                        # server.first_message_timeout_s = 1 (fixture above)
    cl = Client(gw, await user_group_key(gw))
    async with websockets.connect(await _ws_url(gw, cl)) as ws:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
    assert reply["event"] == "reject" and reply["vbgw_code"] == "TIMEOUT" and reply["code"] == 50, reply   # issue #16 item 4
    # also after some audio: each message must follow within the timeout
    async with websockets.connect(await _ws_url(gw, cl)) as ws:
        await ws.send(wav_file("1688_enrol0")[:4000])
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert reply["vbgw_code"] == "TIMEOUT", reply


async def test_one_time_websocket_bad_messages_get_a_reject(gateway):
    gw = gateway
    cl = Client(gw, await user_group_key(gw))
    for message, code in ((b"\0" * (MAX_BODY + 10), "BODY_TOO_LARGE"), ("[" * 30000, "BAD_MESSAGE"),
                          ('{"event": "audio_sent", "x": ' + "1" * 60000 + "}", "BAD_MESSAGE")):
        async with websockets.connect(await _ws_url(gw, cl), max_size=None) as ws:
            await ws.send(message)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert reply["event"] == "reject" and reply["vbgw_code"] == code, reply
