"""Genesys Cloud AudioHook Monitor endpoint (WebSocket, default `/audiohook/ws`).

The upgrade is authenticated before the 101: the organisation is looked up by X-API-KEY, the
HTTP message signature is verified when the organisation has a client secret, and a failure is
answered with 401 no sooner than `audiohook.signature_failure_delay_s` after the request
arrived. The session then runs `connectors.audiohook.serve`, which on `open` attaches the session
to its call (tenant of the organisation, dialog id = conversationId = masterId) through the stream
contract (gateway/calls/attach.py)."""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from connectors import audiohook
from connectors.audiohook import AudioHookError, AudioHookSession, OpenRequest, is_uuid
from connectors.audiohook_signature import NonceCache, SignatureError, VerifyPolicy, authority_of, verify
from connectors.base import StreamPort
from gateway.calls.attach import attach
from gateway.calls.dialog import Dialog, DialogBusy
from gateway.errors import ApiError, bad_request
from gateway.services.audiohook_orgs import SecretBox, api_key_hash
from gateway.services.auth import load_or_create_secret
from gateway.services.verification import MAX_USERS
from gateway.services.wiring import Services
from gateway.store.base import AudioHookOrg, Profile
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.routing import RouteTable
from gateway.web.schemas import BiokeyIn
from gateway.web.websocket import READ_ERROR_CLOSE_CODES, ReportingWebSocket, open_socket

log = structlog.get_logger(__name__)
_ANI_SCHEME = re.compile(r"^(?:tel|sip|sips):", re.I)


class _AuthState:
    """Per-application: the nonce cache and the secret box (built on first use)."""

    def __init__(self, settings):
        cfg = settings.audiohook
        self.settings = settings
        self.policy = VerifyPolicy(clock_skew_s=cfg.clock_skew_s, max_age_s=cfg.max_signature_age_s,
                                   min_nonce_length=cfg.min_nonce_length)
        self.nonces = NonceCache(cfg.nonce_cache_size)
        self._box: SecretBox | None = None

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            s = self.settings
            self._box = SecretBox(load_or_create_secret(s.data_dir, s.auth.hash_secret.get_secret_value()))
        return self._box


AUTH_STATE: web.AppKey[_AuthState] = web.AppKey("audiohook_auth", _AuthState)


class _Routes(RouteTable):
    """The path is configurable (`audiohook.path`), so it is read at install time."""

    def install(self, app: web.Application) -> None:
        settings = app[SETTINGS]
        if not settings.audiohook.enabled:
            return
        app[AUTH_STATE] = _AuthState(settings)
        for s in self.specs:
            app.router.add_route(s.method, settings.audiohook.path, s.handler)


routes = _Routes()


def normalize_ani(ani: str) -> str:
    """`tel:+1-555-555-1234` -> `+15555551234`: the form biokeys must be enrolled in."""
    ani = _ANI_SCHEME.sub("", ani.strip()).split("@")[0].split(";")[0]
    plus = "+" if ani.startswith("+") else ""
    return plus + "".join(c for c in ani if c.isdigit())


async def _authenticate(request: web.Request, core: Services, state: _AuthState) -> AudioHookOrg:
    """The organisation of a valid upgrade request; raises 401 (after the delay) otherwise."""
    started = time.monotonic()
    h = request.headers
    api_key = h.get("X-API-KEY", "")
    org = await core.store.audiohook_org_by_key(api_key_hash(api_key)) if api_key else None
    reason = None
    try:
        if org is not None and org.secret_enc is None:
            pass                                    # this organisation is configured without a secret
        else:
            secret = state.box.open(org.org_id, org.secret_enc) if org is not None and org.secret_enc is not None else None
            if org is not None and secret is None:
                reason = "secret_unreadable"
            verify(method=request.method, request_target=request.raw_path,
                   authority=authority_of(h.get("Host", ""), request.secure), headers=h,
                   secret=secret, policy=state.policy, nonces=state.nonces)
    except SignatureError as exc:
        reason = reason or exc.reason
    if reason is None and org is not None and org.org_id != h.get("Audiohook-Organization-Id", "").lower():
        reason = "org_header_mismatch"
    if reason is None and org is not None:
        return org
    reason = reason or "unknown_api_key"
    core.metrics.inc("vbgw_audiohook_rejected_total", reason=reason)
    log.info("audiohook_unauthorized", reason=reason, org_id=org.org_id if org else None,
             session_id=h.get("Audiohook-Session-Id"), correlation_id=h.get("Audiohook-Correlation-Id"),
             peer=request.remote)
    delay = request.app[SETTINGS].audiohook.signature_failure_delay_s - (time.monotonic() - started)
    if delay > 0:
        await asyncio.sleep(delay)
    raise ApiError(401, "UNAUTHORIZED", "AudioHook authentication failed")


class _Opener:
    """Attaches one AudioHook session to its call (connectors.audiohook.StreamOpener)."""

    def __init__(self, services: Services, org: AudioHookOrg, session_id: str):
        self.services = services
        self.org = org
        self.session_id = session_id
        self.log = log.bind(session_id=session_id, org_id=org.org_id)

    async def _profile(self, custom: dict[str, Any]) -> Profile | None:
        store = self.services.store
        name = custom.get("vbProfile") or custom.get("profile")
        if isinstance(name, str) and name:
            p = await store.get_profile(self.org.tenant_id, name)
            if p is not None:
                return p
            self.log.warning("audiohook_unknown_profile", profile=name[:128])
        if self.org.profile_id:
            return await store.get_profile(self.org.tenant_id, self.org.profile_id)
        return None

    async def attach(self, req: OpenRequest) -> StreamPort:
        p = req.params
        custom = p.customConfig if isinstance(p.customConfig, dict) else {}
        if p.customConfig is not None and not isinstance(p.customConfig, dict):
            self.log.warning("audiohook_custom_config_invalid", error="not a JSON object")
        profile = await self._profile(custom)
        # The connector fixes the call's owner: this profile's dialog (gateway/calls/dialog.py).
        dialog = self.services.dialogs.for_connector(self.org.tenant_id, p.conversationId, profile)
        cfg = self.services.settings.audiohook
        try:
            stream = attach(dialog, connector="audiohook", metrics=self.services.metrics,
                            customer_audio=req.customer_audio or req.problem is not None,
                            final_drain_s=max(0.5, cfg.close_timeout_s / 2))
        except DialogBusy:
            raise AudioHookError("DIALOG_BUSY", "Server error: another stream is already feeding this conversation",
                                 status=audiohook.SYSTEM_ERROR) from None
        self.log = self.log.bind(dialog_id=dialog.dialog_id)
        if req.problem is None and not req.customer_audio:
            self.log.warning("audiohook_no_customer_audio", media=req.media.model_dump() if req.media else None)
        if req.problem is None and req.customer_audio:
            stream.track(asyncio.create_task(self._verify_automatically(dialog, req, custom)))
        return stream

    async def _verify_automatically(self, dialog: Dialog, req: OpenRequest, custom: dict[str, Any]) -> None:
        """customConfig / the participant's ANI name the users to verify: no agent action needed.
        Started only if no verification runs (an agent's request is never replaced by it)."""
        profile = dialog.profile
        if profile is None or dialog.verification is not None:
            return
        try:
            users = custom.get("userIds") or custom.get("users") or []
            if isinstance(users, str):
                users = [users]
            users = [BiokeyIn(key="user_id", value=str(u)).value for u in users][:MAX_USERS]
            biokeys: list[BiokeyIn] = []
            if not users:
                raw = custom.get("biokeys") or {}
                if isinstance(raw, list):
                    raw = {b["key"]: b["value"] for b in raw}
                pairs = {str(k): str(v) for k, v in dict(raw).items()}
                ani_key = custom.get("aniBiokey", "Ani")
                ani = normalize_ani(req.params.participant.ani)
                if ani_key and ani and ani_key not in pairs and profile.settings.biokey(ani_key) is not None:
                    pairs[ani_key] = ani
                biokeys = [BiokeyIn(key=k, value=v) for k, v in pairs.items()]
            started = await self.services.verifier.start_automatic(dialog, users, biokeys, self.services.users)
        except (ValidationError, ApiError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.log.warning("audiohook_custom_config_invalid", error=type(exc).__name__)
            return
        if started:
            self.log.info("audiohook_verification_started", users=len(started))

    def ended(self, outcome: str) -> None:
        self.services.metrics.inc("vbgw_audiohook_sessions_total",
                                  outcome=outcome if outcome in ("completed", "disconnected") else "error")


@routes.route("GET", "/audiohook/ws", summary="Genesys Cloud AudioHook Monitor (WebSocket; X-API-KEY and HTTP "
              "message signature; path set by audiohook.path)", auth="none", content="application/octet-stream",
              tags=("audiohook",))
async def audiohook_ws(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    cfg = request.app[SETTINGS].audiohook
    h = request.headers
    session = AudioHookSession(h.get("Audiohook-Session-Id", ""), h.get("Audiohook-Organization-Id", ""),
                               cfg.max_frame_bytes)
    # A frame aiohttp's reader refuses (too big, text not UTF-8) still gets the protocol's answer.
    ws = ReportingWebSocket(report=lambda code: session.disconnect("error", "Client Error: "
                                                                   + READ_ERROR_CLOSE_CODES[code]),
                            max_msg_size=2 * max(cfg.max_frame_bytes, audiohook.MAX_MESSAGE_CHARS + 1),
                            compress=False)
    if not ws.can_prepare(request).ok:
        raise bad_request("WEBSOCKET_REQUIRED", "this endpoint needs a WebSocket upgrade")
    session_id = h.get("Audiohook-Session-Id", "")
    if not is_uuid(session_id) or not is_uuid(h.get("Audiohook-Organization-Id")):
        raise bad_request("BAD_AUDIOHOOK_HEADERS", "Audiohook-Session-Id and Audiohook-Organization-Id must be UUIDs")
    org = await _authenticate(request, services, request.app[AUTH_STATE])
    await ws.prepare(request)
    async with open_socket(request.app, ws) as wire:
        await audiohook.serve(wire, session, _Opener(services, org, session_id), cfg)
    return ws
