"""The gateway's errors: a stable code and message for the client, and the HTTP status that
carries them. Services raise ApiError; the web layer renders it (gateway/web/errors.py:
`{"error": {"code": ..., "message": ...}}`, or a surface's own envelope)."""
from __future__ import annotations

import re

_OBJECT_REPR = re.compile(r"<[^<>]{0,200}? (?:object )?at 0x[0-9a-fA-F]+>")


def scrub(message: str) -> str:
    """An error text fit for a client: no Python object reprs (`<_io.BytesIO object at 0x...>`,
    which also reveal memory addresses), bounded length. (Here, not in gateway/web/errors.py:
    services keep messages they store for clients, e.g. a recording job's error.)"""
    return _OBJECT_REPR.sub("<object>", message)[:1000]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def unauthorized(message: str = "missing or invalid bearer token") -> ApiError:
    return ApiError(401, "UNAUTHORIZED", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "FORBIDDEN", message)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)
