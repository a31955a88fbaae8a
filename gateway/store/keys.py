"""Data keys for encryption at rest (AES-256-GCM) of voiceprints, audio fingerprints, blocklist
voiceprints and the encrypted copy of sensitive biokey values.

Why this shape: a stored record carries the id of the key that sealed it (a column beside the
ciphertext), so several keys can be readable at once: the *active* key seals every new write,
older keys stay readable until `vbgw admin rotate-key` has re-sealed their records. A key id is
derived from the key (HMAC-SHA256(key, "vbgw data key id"), 16 hex digits): an id can never be
paired with the wrong key, and an operator can tell keys apart without seeing them.

Keys come from the environment (`VBGW_ENCRYPTION__KEYS`: base64 keys separated by commas) or
from a file (`encryption.keys_file`: one base64 key per line, `#` comments); the first key is
the active one. The file is re-read when it changes (rotation by another process) and whenever
a record names a key id this process does not know yet. Associated data binds each ciphertext
to its table and owner row, so a ciphertext copied into another user's row does not decrypt.
Keys are never logged."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.store.base import StoreError

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyUnavailable(StoreError):
    """A record is sealed under a key this process does not have (or the ciphertext is bad)."""
    code = "KEY_UNAVAILABLE"


class KeyConfigError(ValueError):
    """The configured keys cannot be used (message names the source, never a key)."""


def key_id(key: bytes) -> str:
    return hmac.new(key, b"vbgw data key id", hashlib.sha256).hexdigest()[:16]


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys from `text`: base64 items separated by newlines or commas, `#` starts a comment."""
    keys: list[bytes] = []
    items = [i.strip() for line in text.splitlines() for i in line.split("#", 1)[0].split(",")]
    for item in items:
        if not item:
            continue
        try:
            key = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise KeyConfigError(f"{source}: an entry is not base64") from None
        if len(key) != KEY_BYTES:
            raise KeyConfigError(f"{source}: every key must be {KEY_BYTES} bytes (base64 of 32 random bytes)")
        keys.append(key)
    return keys


def aad(table: str, owner: object, field: str = "") -> bytes:
    """Associated data: the ciphertext belongs to this table, owner row and field."""
    return f"vbgw\x1f{table}\x1f{owner}\x1f{field}".encode()


def write_keys_file(path: Path, keys: list[bytes]) -> None:
    """Atomically replace the keys file (owner-only), active key first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# vbgw data keys (AES-256-GCM), base64; the first is active, the others stay readable\n")
        for k in keys:
            f.write(f"{encode_key(k)}  # id {key_id(k)}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DataKeys:
    """The keys this process can open records with, and the active one it seals with."""

    def __init__(self, keys: list[bytes], path: Path | None = None):
        if not keys:
            raise KeyConfigError("no data key configured")
        self.path = path
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self._set(keys)

    @staticmethod
    def file_path(data_dir: Path, keys_file: Path) -> Path:
        return keys_file if keys_file.is_absolute() else Path(data_dir) / keys_file

    @classmethod
    def load(cls, data_dir: Path, keys_file: Path, env_keys: str, create: bool) -> "DataKeys":
        """From `env_keys` if set, else from the file (created with one new key if `create`)."""
        if env_keys.strip():
            return cls(parse_keys(env_keys, "encryption.keys"))
        path = cls.file_path(data_dir, keys_file)
        if not path.exists():
            if not create:
                raise KeyConfigError(
                    f"no data keys: set VBGW_ENCRYPTION__KEYS or create {path} (`vbgw admin rotate-key` creates "
                    "it); with PostgreSQL every instance must share the same keys, so none is generated")
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:       # another process created it first: use that one
                pass
            else:
                os.close(fd)
                write_keys_file(path, [new_key()])
        return cls(parse_keys(path.read_text(), str(path)), path)

    def _stat(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path else None
        except OSError:
            return None

    def _set(self, keys: list[bytes]) -> None:
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self._raw = list(keys)
        self.active_id = key_id(keys[0])

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self._raw]

    def raw_keys(self) -> list[bytes]:
        return list(self._raw)

    def reload(self, force: bool = False) -> bool:
        """Re-read the keys file if it changed (or `force`); True if the keys changed. A file that
        cannot be read keeps the keys in use (the error surfaces when a record needs a missing key)."""
        if self.path is None:
            return False
        with self._lock:
            mtime = self._stat()
            if not force and mtime == self._mtime:
                return False
            try:
                keys = parse_keys(self.path.read_text(), str(self.path))
            except (OSError, KeyConfigError):
                return False
            self._mtime = mtime
            if not keys or keys == self._raw:
                return False
            self._set(keys)
            return True

    def seal(self, plaintext: bytes, ad: bytes) -> tuple[bytes, str]:
        """(nonce + ciphertext + tag, key id) under the active key."""
        kid = self.active_id
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._keys[kid].encrypt(nonce, bytes(plaintext), ad), kid

    def open(self, blob: bytes, kid: str | None, ad: bytes) -> bytes:
        """The plaintext of a stored value; `kid` None means it was stored before encryption."""
        if kid is None:
            return bytes(blob)
        aead = self._keys.get(kid)
        if aead is None and self.reload(force=True):
            aead = self._keys.get(kid)
        if aead is None:
            raise KeyUnavailable(f"a stored record is encrypted under data key {kid}, which this gateway does not "
                                 "have: add that key to encryption.keys_file or VBGW_ENCRYPTION__KEYS")
        blob = bytes(blob)
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
        except (InvalidTag, ValueError):
            raise KeyUnavailable(f"a stored record does not decrypt under data key {kid} (tampered or moved "
                                 "between rows)") from None


def seal_opt(keys: DataKeys | None, plaintext: bytes, ad: bytes) -> tuple[bytes, str | None]:
    """Seal when encryption is on; a store built without keys (tools, old tests) writes plaintext."""
    return keys.seal(plaintext, ad) if keys is not None else (bytes(plaintext), None)


def open_opt(keys: DataKeys | None, blob: bytes, kid: str | None, ad: bytes) -> bytes:
    if kid is None:
        return bytes(blob)
    if keys is None:
        raise KeyUnavailable(f"a stored record is encrypted under data key {kid} but no data keys are loaded")
    return keys.open(blob, kid, ad)
