"""Every failed request gets `{"error": {"code": ..., "message": ...}}` with a stable code."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


async def decode_upload(data: bytes):
    """An uploaded WAV file as int16 8 kHz mono, decoded and resampled off the event loop
    (a 50 MB upload takes seconds) block by block (connectors.codecs.iter_wav_8k), so only
    the result is ever whole; unusable audio is a 415 with the codec's code. (Uploads the
    gateway serves go through gateway.uploads instead, which never holds the whole result.)"""
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
