"""Sessions: personal access tokens (PATs) open session tokens, one per call and agent, and a
session token names its caller (tenant, group, profile: the owner of the calls it reaches).

Session records live behind `SessionStore` (the Repository implements it: SQLite or PostgreSQL),
so several gateway instances share them through the database (issue #17). HTTP details (the
bearer header, `?token=`) are the web layer's (gateway/web/http_auth.py); this module works on
tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.errors import ApiError, forbidden, not_found, unauthorized
from gateway.infra.clock import now_ms
from gateway.services.auth import Keyring, new_session_token, token_hash
from gateway.store.base import Pat, Profile, Repository, SessionRecord, Tenant

if TYPE_CHECKING:
    from gateway.calls.dialog import Dialog
    from gateway.calls.registry import CallRegistry, LiveCall
    from gateway.infra.metrics import Metrics
    from gateway.web.schemas import TokenRequest

TOUCH_EVERY_MS = 5000      # a session's last use is written at most this often (each is a write)


class SessionStore(Protocol):
    """Where session records live (gateway.store.base.Repository implements it)."""
    async def create_session(self, rec: SessionRecord) -> None: ...
    async def get_session(self, token_hash: str) -> SessionRecord | None: ...
    async def touch_session(self, token_hash: str, used_ms: int) -> None: ...
    async def purge_sessions(self, older_than_ms: int) -> int: ...


@dataclass
class Caller:
    """An authenticated session: its record, profile and token."""
    session: SessionRecord
    profile: Profile
    token: str


class Sessions:
    def __init__(self, store: Repository, tokens: SessionStore, keyring: Keyring, idle_s: int,
                 calls: "CallRegistry", metrics: "Metrics"):
        self.store = store
        self.tokens = tokens
        self.keyring = keyring
        self.idle_s = idle_s
        self.calls = calls
        self.metrics = metrics

    # -- personal access tokens ---------------------------------------------------------------
    async def pat(self, token: str | None) -> Pat:
        if not token:
            raise unauthorized("an Authorization: Bearer <personal access token> header is required")
        pat = await self.store.find_pat(token_hash(token))
        if pat is None:
            raise unauthorized("the personal access token is not valid")
        return pat

    async def pat_scope(self, pat: Pat, tenant_ref: str, profile_ref: str) -> tuple[Tenant | None, Profile | None]:
        """The tenant and VB profile a PAT names (by id or name): None for the tenant unless it is
        the PAT's, None for the profile unless it is in the PAT's group (absent and another
        group's look the same: no probing across groups)."""
        tenant = await self.store.get_tenant(tenant_ref)
        if tenant is None or tenant.id != pat.tenant_id:
            return None, None
        profile = await self.store.get_profile(tenant.id, profile_ref)
        if profile is None or profile.group_id != pat.group_id:
            return tenant, None
        return tenant, profile

    # -- session tokens -----------------------------------------------------------------------
    async def create_token(self, pat: Pat, req: "TokenRequest") -> str:
        tenant, profile = await self.pat_scope(pat, req.tenantId, req.vbProfile)
        if tenant is None:
            raise forbidden("the personal access token does not belong to tenant " + repr(req.tenantId))
        if profile is None:
            raise not_found("PROFILE_NOT_FOUND", f"no VB profile {req.vbProfile!r} in this token's group")
        token = new_session_token()
        t = now_ms()
        await self.tokens.create_session(SessionRecord(
            token_hash(token), tenant.id, profile.group_id, profile.id, req.masterId, req.agentId,
            req.agentSkill, req.ccaasProvider, self._session_biokeys(profile, req.customProperties), t, t))
        self.metrics.inc("vbgw_tokens_created_total")
        return token

    def _session_biokeys(self, profile: Profile, custom: dict[str, str]) -> dict[str, str]:
        """What a session keeps of its customProperties: only the profile's biokeys (the one
        use they have: biokeys of an enrolment from the call), sensitive ones as their keyed
        hash, like the biokeys table (docs/security.md). The rest is not stored."""
        kept = {}
        for k, v in custom.items():
            d = profile.settings.biokey(k)
            if d is not None:
                kept[k] = self.keyring.biokey_value(profile.id, k, v) if d.sensitive else v
        return kept

    async def session_for(self, token: str) -> SessionRecord:
        """The session of a token, whose use it records; 401 if unknown or expired."""
        th = token_hash(token)
        rec = await self.tokens.get_session(th)
        if rec is None:
            raise unauthorized("the session token is not valid")
        now = now_ms()
        if now - rec.last_used_ms > self.idle_s * 1000:
            raise ApiError(401, "TOKEN_EXPIRED", "the session token expired; create a new one with POST /api/token/")
        # Refresh at most every few seconds: each refresh is a write.
        if now - rec.last_used_ms > TOUCH_EVERY_MS:
            await self.tokens.touch_session(th, now)
        return rec

    async def current(self, token: str) -> SessionRecord | None:
        """A token's session as stored now, without recording a use (an open SSE stream asks
        whether its token expired)."""
        return await self.tokens.get_session(token_hash(token))

    async def caller(self, token: str) -> Caller:
        rec = await self.session_for(token)
        profile = await self.store.get_profile(rec.tenant_id, rec.profile_id)
        if profile is None:
            raise ApiError(401, "PROFILE_GONE", "the session's VB profile no longer exists")
        return Caller(rec, profile, token)

    async def purge_expired(self) -> int:
        """Delete session rows whose token expired (auth.token_idle_s without use)."""
        return await self.tokens.purge_sessions(now_ms() - self.idle_s * 1000)

    # -- the caller's call --------------------------------------------------------------------
    def dialog_of(self, c: Caller, create: bool = False) -> "Dialog | None":
        """The session's own dialog on its masterId: its profile's, never another profile's or
        group's (the ownership rule: gateway/calls/dialog.py). `create`: one of its own if none."""
        return self.calls.for_session(c.session.tenant_id, c.session.master_id, c.profile, create)

    async def call_of(self, c: Caller, create: bool = False) -> "LiveCall | None":
        """`dialog_of` for the live surfaces, across instances: the session's own call on the
        instance that owns it (a RemoteCall, gateway/calls/cluster.py), else its dialog here."""
        remote = await self.calls.locate(c.session.tenant_id, c.session.master_id, c.profile)
        return remote if remote is not None else self.dialog_of(c, create)
