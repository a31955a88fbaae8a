"""Every failed request gets `{"error": {"code": ..., "message": ...}}` with a stable code
(gateway.errors.ApiError), never a traceback: `error_middleware` turns whatever a handler raised
into that envelope (or closes a response already under way)."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel

from connectors.safejson import JsonInputError
from gateway.errors import ApiError, scrub
from gateway.store.base import StoreUnavailable
from gateway.store.keys import KeyUnavailable
from gateway.web.appkeys import SERVICES, SETTINGS
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


# The response a handler prepared (a WebSocket, an SSE stream), if any: no second one can follow.
PREPARED: web.RequestKey[web.StreamResponse] = web.RequestKey("prepared_response", web.StreamResponse)


async def remember_prepared(request: web.Request, response: web.StreamResponse) -> None:
    """app.on_response_prepare: note the response under way for error_middleware."""
    request[PREPARED] = response


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """No traceback ever reaches a client: bad input keeps its stable code (client_error), the
    rest are 500 INTERNAL with a reference to the log line. Once a response was prepared (a
    WebSocket, an SSE stream) no second one can be written: the socket is closed instead of an
    HTTP 500 going into it."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except (StoreUnavailable, KeyUnavailable) as exc:     # the database is down / a data key is missing
        err = ApiError(503, exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        err = client_error(exc, request.app[SETTINGS].server.max_body_bytes) or internal_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, f"HTTP_{exc.status}")
        err = ApiError(exc.status, code, exc.reason,
                       headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"} or None)
    except Exception as exc:  # noqa: BLE001 - anything else is a server fault, answered 500
        err = client_error(exc, request.app[SETTINGS].server.max_body_bytes) or internal_error(request, exc)
    request.app[SERVICES].metrics.inc("vbgw_errors_total", code=err.code)
    prepared = request.get(PREPARED)
    if prepared is not None:
        if isinstance(prepared, web.WebSocketResponse) and not prepared.closed:
            await prepared.close(code=1011 if err.status >= 500 else 1008, message=err.code.encode()[:120])
        return prepared
    return error_response(err)
