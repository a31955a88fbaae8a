"""`read_body` reads a request's body once and keeps it under a typed request key: a forwarded
(signed) request between instances reads it before the handler does. aiohttp 3.14 warned
NotAppKeyWarning for the string key it had, on every such request."""
from __future__ import annotations

import warnings

import pytest
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

from gateway.errors import ApiError
from gateway.web.routing import RAW_BODY, read_body


def _request(body: bytes) -> web.Request:
    protocol = make_mocked_request("POST", "/x").protocol
    payload = streams.StreamReader(protocol, 2 ** 16, loop=protocol._loop)
    payload.feed_data(body)
    payload.feed_eof()
    return make_mocked_request("POST", "/x", headers={"Content-Length": str(len(body))}, payload=payload)


async def test_the_body_is_read_once_and_kept_without_a_warning():
    req = _request(b'{"a": 1}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # NotAppKeyWarning would raise here
        assert await read_body(req, 1024) == b'{"a": 1}'
        assert req[RAW_BODY] == b'{"a": 1}'
        assert await read_body(req, 1024) == b'{"a": 1}'  # the kept copy: the stream is spent


async def test_a_body_over_the_limit_is_refused():
    with pytest.raises(ApiError) as err:
        await read_body(_request(b"x" * 2000), 1024)
    assert err.value.status == 413 and err.value.code == "BODY_TOO_LARGE"
