"""Credentials of an HTTP request: the bearer header, or `?token=` (SSE and WebSocket clients
cannot set headers). Deciding what a credential reaches is gateway/services/sessions.py's."""
from __future__ import annotations

from aiohttp import web

from gateway.errors import unauthorized
from gateway.services.sessions import Caller
from gateway.store.base import Pat
from gateway.web.appkeys import SERVICES


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    # The seed writes "Bearer : {session_token}" in places; accept that spelling too.
    value = value.strip()
    if value.startswith(":"):
        value = value[1:].strip()
    return value or None


def session_token(request: web.Request) -> str:
    """The session token of a request: bearer header, or ?token=. If both are present they must
    agree."""
    header_tok = bearer(request)
    query_tok = request.query.get("token")
    if header_tok and query_tok and header_tok != query_tok:
        raise unauthorized("the bearer token and the token parameter differ")
    tok = header_tok or query_tok
    if not tok:
        raise unauthorized("a session token is required (Authorization: Bearer <token> or ?token=)")
    return tok


async def caller(request: web.Request) -> Caller:
    """The request's session (401 if missing, unknown or expired)."""
    return await request.app[SERVICES].sessions.caller(session_token(request))


async def pat(request: web.Request) -> Pat:
    """The request's personal access token (Authorization: Bearer)."""
    return await request.app[SERVICES].sessions.pat(bearer(request))
