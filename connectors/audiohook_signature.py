"""AudioHook HTTP message signatures (draft-ietf-httpbis-message-signatures-11, the HMAC-SHA256
profile Genesys uses; see docs/genesys-audiohook.md and the protocol brief, section 3).

Pure code, no I/O: parse `Signature-Input` / `Signature`, rebuild the signature base from the
parsed parameters (never copied raw), check the rules, compare in constant time, and remember
nonces so a captured upgrade request cannot be replayed. `sign()` is the client side, used by
the simulator and the tests."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

REQUIRED_COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
                       "audiohook-correlation-id", "x-api-key")
ALG = "hmac-sha256"

_KEY = r"[a-z*][a-z0-9_.*-]*"
_TOKEN_RE = re.compile(r"[A-Za-z*][A-Za-z0-9:/!#$%&'*+.^_`|~-]*")
_KEY_RE = re.compile(_KEY)
_INT_RE = re.compile(r"-?\d{1,15}")


class SignatureError(Exception):
    """A reason a signature is not acceptable. `reason` is a stable short code for logs and
    metrics; the message is for the log line only (the peer just gets 401)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# -- a small RFC 8941 structured-field parser (dictionaries of inner lists / byte sequences) --

class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def fail(self, what: str) -> SignatureError:
        return SignatureError("malformed", f"malformed structured field ({what} at {self.i})")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def key(self) -> str:
        m = _KEY_RE.match(self.s, self.i)
        if not m:
            raise self.fail("key")
        self.i = m.end()
        return m.group()

    def bare_item(self):
        if self.i >= len(self.s):
            raise self.fail("item")
        c = self.s[self.i]
        if c == '"':
            out = []
            self.i += 1
            while self.i < len(self.s):
                ch = self.s[self.i]
                self.i += 1
                if ch == "\\":
                    if self.i >= len(self.s) or self.s[self.i] not in '"\\':
                        raise self.fail("escape")
                    out.append(self.s[self.i])
                    self.i += 1
                elif ch == '"':
                    return "".join(out)
                elif not (" " <= ch <= "~"):
                    raise self.fail("string character")
                else:
                    out.append(ch)
            raise self.fail("unterminated string")
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0:
                raise self.fail("byte sequence")
            raw = self.s[self.i + 1:end]
            self.i = end + 1
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise self.fail("base64") from None
        if c == "-" or c.isdigit():
            m = _INT_RE.match(self.s, self.i)
            if not m or (m.end() < len(self.s) and self.s[m.end()] == "."):
                raise self.fail("integer")
            self.i = m.end()
            return int(m.group())
        if c == "?":
            if self.s[self.i + 1:self.i + 2] not in ("0", "1"):
                raise self.fail("boolean")
            self.i += 2
            return self.s[self.i - 1] == "1"
        m = _TOKEN_RE.match(self.s, self.i)
        if not m:
            raise self.fail("item")
        self.i = m.end()
        return _Token(m.group())

    def params(self) -> dict:
        out: dict = {}
        while self.i < len(self.s) and self.s[self.i] == ";":
            self.i += 1
            self.ws()
            k = self.key()
            v: object = True
            if self.i < len(self.s) and self.s[self.i] == "=":
                self.i += 1
                v = self.bare_item()
            out[k] = v
        return out

    def item_or_inner_list(self):
        if self.i < len(self.s) and self.s[self.i] == "(":
            self.i += 1
            items = []
            while True:
                self.ws()
                if self.i >= len(self.s):
                    raise self.fail("inner list")
                if self.s[self.i] == ")":
                    self.i += 1
                    return items, self.params()
                items.append((self.bare_item(), self.params()))
                if self.i < len(self.s) and self.s[self.i] not in " )":
                    raise self.fail("inner list separator")
        return self.bare_item(), self.params()

    def dictionary(self) -> dict:
        out: dict = {}
        self.ws()
        while self.i < len(self.s):
            k = self.key()
            if self.i < len(self.s) and self.s[self.i] == "=":
                self.i += 1
                out[k] = self.item_or_inner_list()
            else:
                out[k] = (True, self.params())
            self.ws()
            if self.i >= len(self.s):
                break
            if self.s[self.i] != ",":
                raise self.fail("dictionary separator")
            self.i += 1
            self.ws()
            if self.i >= len(self.s):
                raise self.fail("trailing comma")
        return out


class _Token(str):
    """An sf-token (unquoted), kept apart from sf-strings for re-serialisation."""


def _serialize_item(v) -> str:
    if isinstance(v, bool):
        return "?1" if v else "?0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytes):
        return ":" + base64.b64encode(v).decode() + ":"
    if isinstance(v, _Token):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _serialize_params(params: Mapping) -> str:
    return "".join(f";{k}" if v is True else f";{k}={_serialize_item(v)}" for k, v in params.items())


def serialize_signature_params(components: list[str], params: Mapping) -> str:
    return "(" + " ".join(_serialize_item(c) for c in components) + ")" + _serialize_params(params)


def signature_base(components: list[str], values: Mapping[str, str], params: Mapping) -> str:
    lines = [f'"{c}": {values[c]}' for c in components]
    lines.append(f'"@signature-params": {serialize_signature_params(components, params)}')
    return "\n".join(lines)


def authority_of(host: str, secure: bool | None = None) -> str:
    """`@authority`: the Host value, lower-case, without a default port."""
    host = host.strip().lower()
    for port, is_secure in ((":443", True), (":80", False)):
        if host.endswith(port) and secure in (None, is_secure):
            return host[: -len(port)]
    return host


def _header_value(headers: Mapping[str, str], name: str) -> str | None:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        vals = getall(name, [])
        if not vals:
            return None
        return ", ".join(" ".join(v.split()) for v in vals)
    v = headers.get(name)
    return None if v is None else " ".join(v.split())


# -- signing (client side) -------------------------------------------------------------------

def new_nonce() -> str:
    return base64.b64encode(os.urandom(18)).decode()


def sign(*, request_target: str, authority: str, org_id: str, session_id: str, correlation_id: str,
         api_key: str, client_secret: str, created: int | None = None, expires_in: int = 30,
         nonce: str | None = None, label: str = "sig1") -> dict[str, str]:
    """The `Signature` and `Signature-Input` headers for an AudioHook upgrade request."""
    created = int(time.time()) if created is None else created
    params = {"keyid": api_key, "nonce": nonce or new_nonce(), "alg": ALG, "created": created,
              "expires": created + expires_in}
    values = {"@request-target": request_target, "@authority": authority, "audiohook-organization-id": org_id,
              "audiohook-session-id": session_id, "audiohook-correlation-id": correlation_id,
              "x-api-key": api_key}
    comps = list(REQUIRED_COMPONENTS)
    base = signature_base(comps, values, params)
    mac = hmac.new(base64.b64decode(client_secret), base.encode(), hashlib.sha256).digest()
    return {"Signature-Input": f"{label}={serialize_signature_params(comps, params)}",
            "Signature": f"{label}=:{base64.b64encode(mac).decode()}:"}


# -- verification (server side) --------------------------------------------------------------

class NonceCache:
    """Nonces of accepted signatures, each kept until its signature could no longer be valid.
    Bounded: when full, the entry that expires first is evicted (it is the least useful)."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._entries: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        # Entries are inserted with non-decreasing expiry in practice; purge from the front.
        while self._entries:
            nonce, until = next(iter(self._entries.items()))
            if until >= now:
                break
            self._entries.popitem(last=False)

    def add(self, nonce: str, until: float, now: float) -> bool:
        """Record a nonce; False if it was already seen (a replay)."""
        self._purge(now)
        if nonce in self._entries:
            return False
        if len(self._entries) >= self.max_size:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._entries[nonce] = until
        return True


@dataclass(frozen=True)
class VerifyPolicy:
    clock_skew_s: int = 3
    max_age_s: int = 10
    min_nonce_length: int = 22
    max_nonce_length: int = 256


@dataclass(frozen=True)
class Verified:
    label: str
    keyid: str
    nonce: str
    created: int
    expires: int | None


def verify(*, method: str, request_target: str, authority: str, headers: Mapping[str, str],
           secret: bytes | None, policy: VerifyPolicy, nonces: NonceCache | None,
           now: float | None = None) -> Verified:
    """Check the upgrade request's signature; raises SignatureError with a reason code.

    `secret` is the decoded client secret of the organisation the X-API-KEY belongs to, or None
    for an unknown key: an HMAC is still computed (with a random key) so an unknown key costs
    the same time as a bad signature."""
    now = time.time() if now is None else now
    api_key = _header_value(headers, "x-api-key")
    if not api_key:
        raise SignatureError("no_api_key", "X-API-KEY header missing")
    sig_input_raw = _header_value(headers, "signature-input")
    sig_raw = _header_value(headers, "signature")
    if not sig_input_raw or not sig_raw:
        raise SignatureError("unsigned", "Signature / Signature-Input headers missing")
    inputs = _Parser(sig_input_raw).dictionary()
    sigs = _Parser(sig_raw).dictionary()
    label = next((k for k in inputs if k in sigs), None)
    if label is None:
        raise SignatureError("malformed", "no signature label present in both Signature-Input and Signature")
    inner, params = inputs[label]
    sig_bytes, _ = sigs[label]
    if not isinstance(inner, list) or not isinstance(sig_bytes, bytes):
        raise SignatureError("malformed", "Signature-Input must be an inner list and Signature a byte sequence")
    components: list[str] = []
    for item, item_params in inner:
        if not isinstance(item, str) or isinstance(item, _Token):
            raise SignatureError("malformed", "covered components must be strings")
        if item_params:
            raise SignatureError("unsupported_component", f"component parameters are not supported ({item})")
        if item in components:
            raise SignatureError("malformed", f"component {item} covered twice")
        components.append(item)
    missing = [c for c in REQUIRED_COMPONENTS if c not in components]
    if missing:
        raise SignatureError("missing_component", "signature does not cover " + ", ".join(missing))
    keyid = params.get("keyid")
    if not isinstance(keyid, str) or keyid != api_key:
        raise SignatureError("keyid_mismatch", "keyid does not equal X-API-KEY")
    alg = params.get("alg", ALG)
    if alg != ALG:
        raise SignatureError("bad_alg", f"unsupported alg {alg!r}")
    nonce = params.get("nonce")
    if not isinstance(nonce, str) or not (policy.min_nonce_length <= len(nonce) <= policy.max_nonce_length):
        raise SignatureError("bad_nonce", f"nonce must be a string of {policy.min_nonce_length} to "
                                          f"{policy.max_nonce_length} characters")
    created = params.get("created")
    expires = params.get("expires")
    if not isinstance(created, int) or isinstance(created, bool):
        raise SignatureError("no_created", "created parameter missing or not an integer")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise SignatureError("malformed", "expires is not an integer")
    if created > now + policy.clock_skew_s:
        raise SignatureError("created_in_future", "signature created in the future (check NTP)")
    if created + policy.max_age_s + policy.clock_skew_s < now:
        raise SignatureError("expired", "signature too old")
    if expires is not None and expires + policy.clock_skew_s < now:
        raise SignatureError("expired", "signature expired")
    values: dict[str, str] = {"@request-target": request_target, "@authority": authority}
    for c in components:
        if c in values:
            continue
        if c.startswith("@"):
            raise SignatureError("unsupported_component", f"derived component {c} is not supported")
        v = _header_value(headers, c)
        if v is None:
            raise SignatureError("missing_header", f"covered header {c} is absent")
        values[c] = v
    base = signature_base(components, values, params)
    key = secret if secret is not None else os.urandom(32)
    expected = hmac.new(key, base.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, sig_bytes) or secret is None:
        raise SignatureError("bad_signature" if secret is not None else "unknown_api_key",
                             "signature does not verify" if secret is not None else "unknown API key")
    if nonces is not None:
        until = created + policy.max_age_s + policy.clock_skew_s
        if expires is not None:
            until = min(until, expires + policy.clock_skew_s)
        if not nonces.add(nonce, until, now):
            raise SignatureError("replayed_nonce", "nonce already used")
    return Verified(label, keyid, nonce, created, expires)


def decode_secret(secret_b64: str) -> bytes:
    return base64.b64decode(secret_b64, validate=True)


