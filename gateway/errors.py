"""Every failed request gets `{"error": {"code": ..., "message": ...}}` with a stable code."""
from __future__ import annotations

import re

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel

from connectors.safejson import JsonInputError
from gateway.web.limits import BodyTimeout


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, headers=self.headers)


_OBJECT_REPR = re.compile(r"<[^<>]{0,200}? (?:object )?at 0x[0-9a-fA-F]+>")


def scrub(message: str) -> str:
    """An error text fit for a client: no Python object reprs (`<_io.BytesIO object at 0x...>`,
    which also reveal memory addresses), bounded length."""
    return _OBJECT_REPR.sub("<object>", message)[:1000]


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": scrub(message)}}, status=status, headers=headers)


def client_error(exc: BaseException, max_body_bytes: int) -> ApiError | None:
    """The stable client error for an exception that bad input raises below the handlers
    (aiohttp's body reading, the JSON parser, the body deadline), or None for a server fault.
    Both error envelopes (OCP: the error middleware; Aculab: its own wrapper) answer with it."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, JsonInputError):
        return ApiError(400, exc.code, exc.message)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return ApiError(413, "BODY_TOO_LARGE", f"request bodies are limited to {max_body_bytes} bytes")
    if isinstance(exc, BodyTimeout):
        return ApiError(408, "REQUEST_TIMEOUT", str(exc))
    if isinstance(exc, RequestPayloadError):
        return ApiError(400, "MALFORMED_BODY", "the request body could not be read (bad chunked or "
                                               "compressed encoding, or cut short)")
    return None


def internal_error(request: web.Request, exc: BaseException) -> ApiError:
    """A server fault: logged once (one JSON line with the traceback and a reference), answered
    with the reference only."""
    import secrets

    import structlog
    ref = secrets.token_hex(6)
    structlog.get_logger("gateway.errors").error("unhandled_error", ref=ref, path=request.path, exc_info=exc)
    return ApiError(500, "INTERNAL", f"internal error (reference {ref})")


async def decode_upload(data: bytes):
    """An uploaded WAV file as int16 8 kHz mono, decoded and resampled off the event loop
    (a 50 MB upload takes seconds) block by block (connectors.codecs.iter_wav_8k), so only
    the result is ever whole; unusable audio is a 415 with the codec's code. (Uploads the
    gateway serves go through gateway.services.uploads instead, which never holds the whole result.)"""
    import asyncio

    import numpy as np

    from connectors.base import ConnectorError
    from connectors.codecs import iter_wav_8k

    def decode():
        return np.concatenate([np.zeros(0, np.int16), *iter_wav_8k(data)])
    try:
        return await asyncio.to_thread(decode)
    except ConnectorError as exc:
        raise ApiError(415, exc.code, exc.message) from None


def unauthorized(message: str = "missing or invalid bearer token") -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", message)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)
