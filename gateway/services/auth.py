"""Personal access tokens, session tokens and keyed hashes.

PATs and session tokens are stored only as SHA-256 hashes; bio_user_id and sensitive biokey
values are HMAC-SHA256 under a per-installation secret, so they can be matched but not
reversed or recomputed without the secret."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from pathlib import Path

from aiohttp import web

from gateway.errors import ApiError, unauthorized
from gateway.infra.files import private_dir
from gateway.store.base import Pat, Repository, SessionRecord

PAT_PREFIX = "vbgw_pat_"
HASHED_PREFIX = "hmac:"       # a stored biokey value that is the keyed hash of the value


def new_pat() -> str:
    return PAT_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    # uuid4 draws 122 bits from os.urandom: unguessable, and the seed's token format.
    return str(uuid.uuid4())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_or_create_secret(data_dir: Path, configured: str) -> bytes:
    if configured:
        return configured.encode()
    path = Path(data_dir) / "secret.key"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    private_dir(path.parent)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


class Keyring:
    def __init__(self, secret: bytes):
        self._secret = secret
        # Stored with each sensitive biokey hash, so a changed secret is detected (docs/security.md).
        self.key_id = hmac.new(secret, b"vbgw hash key id", hashlib.sha256).hexdigest()[:16]

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def bio_user_id(self, profile_id: str, user_id: str) -> str:
        return self._mac("bio_user_id", profile_id, user_id)

    def biokey_value(self, profile_id: str, key: str, value: str) -> str:
        return HASHED_PREFIX + self._mac("biokey", profile_id, key, value)


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


class Authenticator:
    def __init__(self, store: Repository, idle_s: int):
        self.store = store
        self.idle_s = idle_s

    async def pat(self, request: web.Request) -> Pat:
        tok = bearer(request)
        if not tok:
            raise unauthorized("an Authorization: Bearer <personal access token> header is required")
        pat = await self.store.find_pat(token_hash(tok))
        if pat is None:
            raise unauthorized("the personal access token is not valid")
        return pat

    async def session(self, request: web.Request, token: str | None = None) -> tuple[SessionRecord, str]:
        """The session of a request: bearer header, or ?token= (SSE and WebSocket clients
        cannot set headers). If both are present they must agree."""
        header_tok = bearer(request)
        query_tok = token if token is not None else request.query.get("token")
        if header_tok and query_tok and header_tok != query_tok:
            raise unauthorized("the bearer token and the token parameter differ")
        tok = header_tok or query_tok
        if not tok:
            raise unauthorized("a session token is required (Authorization: Bearer <token> or ?token=)")
        return await self.session_for(tok), tok

    async def session_for(self, tok: str) -> SessionRecord:
        th = token_hash(tok)
        rec = await self.store.get_session(th)
        if rec is None:
            raise unauthorized("the session token is not valid")
        now = int(time.time() * 1000)
        if now - rec.last_used_ms > self.idle_s * 1000:
            raise ApiError(401, "TOKEN_EXPIRED", "the session token expired; create a new one with POST /api/token/")
        # Refresh at most every few seconds: each refresh is a write.
        if now - rec.last_used_ms > 5000:
            await self.store.touch_session(th, now)
        return rec
