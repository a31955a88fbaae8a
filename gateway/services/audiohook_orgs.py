"""Genesys AudioHook organisations: credentials, their storage, and `vbgw audiohook add-org`.

Storage choice: the API key is random (256 bits) and only ever compared, so the database keeps
its SHA-256 alone. The client secret is the HMAC key of the request signature, so the gateway
needs it back: it is stored encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from
the installation secret (`<data_dir>/secret.key` or `auth.hash_secret`), with the organisation
id as associated data so a ciphertext cannot be moved to another organisation's row. Neither
value is ever logged; `add-org` prints them once. Changing the installation secret makes the
stored client secrets unreadable: re-issue them with `add-org --rotate`."""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import sys
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.store.base import AudioHookOrg, Conflict, Repository, Tenant

_INFO = b"vbgw audiohook client secret v1"
_PREFIX = "v1:"


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_credentials() -> tuple[str, str]:
    """(API key, base64 client secret). The key is hex: nothing in it needs quoting anywhere,
    and it never starts with "-" (a urlsafe key did one time in 32, and command lines then
    took it for an option: `audiohook-sim --api-key -x...` failed)."""
    return secrets.token_hex(32), base64.b64encode(os.urandom(32)).decode()


class SecretBox:
    def __init__(self, installation_secret: bytes):
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(installation_secret)
        self._aead = AESGCM(key)

    def seal(self, org_id: str, secret: bytes) -> str:
        nonce = os.urandom(12)
        return _PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, secret, org_id.encode())).decode()

    def open(self, org_id: str, sealed: str) -> bytes | None:
        """The client secret, or None if it cannot be decrypted (wrong installation secret)."""
        if not sealed.startswith(_PREFIX):
            return None
        try:
            raw = base64.b64decode(sealed[len(_PREFIX):])
            return self._aead.decrypt(raw[:12], raw[12:], org_id.encode())
        except (InvalidTag, ValueError):
            return None


async def owner_of(store: Repository, tenant: str | None, profile: str | None, fallback_tenant_id: str | None,
                   fallback_tenant_name: str) -> tuple[Tenant, str | None]:
    """Where a connector credential's calls go (`add-org`, `nice add-bu`): the tenant named (made
    if missing), else the credential's current tenant (`fallback_tenant_id`, when it is being
    rotated), else one named `fallback_tenant_name` (made if missing); and the id of `profile`
    in it (Conflict if there is no such profile), None without one."""
    t = await store.get_tenant(tenant) if tenant else None
    if tenant and t is None:
        t = await store.ensure_tenant(tenant)
    if t is None and fallback_tenant_id:
        t = await store.get_tenant(fallback_tenant_id)
    if t is None:
        t = await store.ensure_tenant(fallback_tenant_name)
    if not profile:
        return t, None
    p = await store.get_profile(t.id, profile)
    if p is None:
        raise Conflict(f"no VB profile {profile!r} in tenant {t.name!r}; create it with "
                       "`vbgw admin profile` or `vbgw admin bootstrap` first")
    return t, p.id


async def add_org(store: Repository, box: SecretBox, org_id: str, tenant: str | None, profile: str | None,
                  with_secret: bool = True, rotate: bool = False) -> tuple[AudioHookOrg, str, str | None]:
    org_id = org_id.lower()
    existing = None if tenant else await store.get_audiohook_org(org_id)
    t, profile_id = await owner_of(store, tenant, profile, existing.tenant_id if existing else None, org_id)
    api_key, secret = new_credentials()
    sealed = box.seal(org_id, base64.b64decode(secret)) if with_secret else None
    org = AudioHookOrg(org_id, t.id, profile_id, api_key_hash(api_key), sealed, int(time.time() * 1000))
    await store.save_audiohook_org(org, replace=rotate)
    return org, api_key, secret if with_secret else None


def print_instructions(org: AudioHookOrg, tenant_name: str, profile_name: str | None, api_key: str,
                       secret: str | None, uri: str, out=None) -> None:
    p = lambda s="": print(s, file=out or sys.stdout)  # noqa: E731
    p(f"AudioHook organization {org.org_id} -> tenant {tenant_name} ({org.tenant_id}), "
      f"default VB profile: {profile_name or '(none: set customConfig.vbProfile)'}")
    p()
    p("In Genesys Cloud: Admin > Integrations > + Integrations > AudioHook Monitor > Install, then")
    p("Configuration > Properties:")
    p(f"  Connection URI:  {uri}")
    p("  Channel:         Both  (external = customer is scored, internal = agent)")
    p('  Custom Configuration (optional JSON): {"vbProfile": "<profile>", "aniBiokey": "Ani"}')
    p("Configuration > Credentials > Configure:")
    p("  API Key:         the api_key value below")
    p("  Client Secret:   " + ("the client_secret value below" if secret else "(leave empty: unsigned requests)"))
    p("Then set the integration Active; Genesys runs a connection probe that must succeed.")
    p("These credentials are shown once; the gateway keeps only a hash of the key and an encrypted secret.")
    p()
    p(f"api_key={api_key}")
    p(f"client_secret={secret or ''}")

