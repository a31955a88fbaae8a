"""Every failed request gets `{"error": {"code": ..., "message": ...}}` with a stable code
(gateway.errors.ApiError), never a traceback."""
from __future__ import annotations

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel

from connectors.safejson import JsonInputError
from gateway.errors import ApiError, scrub
from gateway.web.limits import BodyTimeout


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(err: ApiError) -> web.Response:
    return web.json_response({"error": {"code": err.code, "message": scrub(err.message)}}, status=err.status,
                             headers=err.headers)


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
