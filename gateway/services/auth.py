"""Personal access tokens, session tokens and keyed hashes (what a credential reaches:
gateway/services/sessions.py; how a request carries it: gateway/web/http_auth.py).

PATs and session tokens are stored only as SHA-256 hashes; bio_user_id and sensitive biokey
values are HMAC-SHA256 under a per-installation secret, so they can be matched but not
reversed or recomputed without the secret."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from gateway.infra.files import private_dir

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
