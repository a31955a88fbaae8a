"""NICE CXone CAAE audio relay endpoint (WebSocket, default `/nice/ws`), and the agent panel's
entry for the CAAE app's App URL (`/nice/agent?params={scriptparams}`).

The upgrade is authenticated before the 101: the business unit is looked up by its API key, from
the configured header (`nice.header`, e.g. X-Api-Key), `Authorization: Bearer`, or `?token=`; a
failure is answered 401 no sooner than `nice.auth_failure_delay_s` after the request arrived.
Each socket then runs `connectors.nice.serve`, which on the initial message attaches the
socket's perspective to its contact's call through the stream contract (gateway/calls/attach.py):
dialog id = contact id = masterId, in the unit's tenant, owned by its VB profile; TX and MIX feed
the customer channel (MIX flagged `mixed`), RX the agent channel, so the TX and RX sockets of one
contact meet in one dialog. A socket's close may be a hold: the call stays open
`nice.resume_idle_s` for a socket of the same contact to come back (docs/nice-cxone.md)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from pydantic import ValidationError

from connectors import nice
from connectors.base import CLOSE_NORMAL, CLOSE_TRY_AGAIN, Channel, ConnectorError, StreamPort
from connectors.nice import Handshake, norm_key
from gateway.calls.attach import StreamAttachment, attach
from gateway.calls.cluster import ClusterCallRegistry
from gateway.calls.dialog import Dialog, DialogBusy
from gateway.errors import ApiError, bad_request
from gateway.services.nice_units import api_key_hash
from gateway.services.verification import MAX_USERS
from gateway.services.wiring import Services
from gateway.store.base import NiceBusinessUnit, Profile
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.audiohook import normalize_ani
from gateway.web.http_auth import bearer
from gateway.web.routing import RouteTable
from gateway.web.schemas import BiokeyIn
from gateway.web.websocket import ReportingWebSocket, open_socket

log = structlog.get_logger(__name__)

PANEL_PATH = "/nice/agent"
# Script parameters that configure the call rather than name the caller (never biokeys).
PROFILE_KEYS = ("vbprofile", "profile")
TOKEN_KEYS = ("vbgwtoken", "token", "sessiontoken")
USER_ID_KEYS = ("userid", "biouserid")
ANI_KEY = "ani"
TAKEOVER_WAIT_S = 3.0


@dataclass
class _Live:
    """A socket feeding a perspective of a dialog: a newer socket of the same perspective (CXone
    recovering a connection this side has not seen drop yet) takes its place."""
    wire: Any
    done: asyncio.Event = field(default_factory=asyncio.Event)


LIVE: web.AppKey[dict[tuple[Any, str], _Live]] = web.AppKey("nice_live", dict)


class _Routes(RouteTable):
    """The socket's path is configurable (`nice.path`), so it is read at install time."""

    def install(self, app: web.Application) -> None:
        settings = app[SETTINGS]
        if not settings.nice.enabled:
            return
        app[LIVE] = {}
        for s in self.specs:
            app.router.add_route(s.method, settings.nice.path if s.handler is nice_ws else s.path, s.handler)


routes = _Routes()


def _api_key(request: web.Request, header: str) -> str:
    """The API key of an upgrade: the configured header, the bearer header, or ?token=."""
    return (request.headers.get(header, "").strip() or bearer(request) or request.query.get("token", "").strip())


async def _authenticate(request: web.Request, core: Services) -> NiceBusinessUnit:
    """The business unit of a valid upgrade request; raises 401 (after the delay) otherwise."""
    started = time.monotonic()
    cfg = request.app[SETTINGS].nice
    key = _api_key(request, cfg.header)
    bu = await core.store.nice_bu_by_key(api_key_hash(key)) if key else None
    if bu is not None:
        return bu
    reason = "unknown_api_key" if key else "no_api_key"
    core.metrics.inc("vbgw_nice_rejected_total", reason=reason)
    log.info("nice_unauthorized", reason=reason, peer=request.remote)
    delay = cfg.auth_failure_delay_s - (time.monotonic() - started)
    if delay > 0:
        await asyncio.sleep(delay)
    raise ApiError(401, "UNAUTHORIZED", "NICE CXone authentication failed: give the business unit's API key in "
                   f"the {cfg.header} header, Authorization: Bearer, or ?token=")


def _param(params: dict[str, str], keys: tuple[str, ...]) -> str | None:
    by_norm = {norm_key(k): v for k, v in params.items()}
    return next((by_norm[k] for k in keys if by_norm.get(k)), None)


class _NicePort:
    """One socket's StreamAttachment, with NICE's rule for final results. Several sockets feed
    one call and each may end in-band, so `finish` publishes the call's final results only for
    the customer's channel (an RX socket has none of its own) and only when they say something
    new: speech arrived since the last result (Dialog.publish_final_unless_said, which the end
    of a hold that never resumed uses too). The agent never gets the same result twice."""

    def __init__(self, stream: StreamAttachment, channel: Channel):
        self.stream = stream
        self.channel = channel
        self.dialog_id = stream.dialog_id
        # per message (50 a second per socket): the attachment's own methods, no extra layer
        self.push = stream.push
        self.wait_capacity = stream.wait_capacity

    def report(self, status: str, reason: str) -> None:
        self.stream.report(status, reason)

    async def finish(self) -> None:
        if self.channel != "customer":
            return
        await self.stream.wait_work()
        await self.stream.dialog.publish_final_unless_said(self.stream.final_drain_s)

    async def end(self, reason: str, resume_within_s: float = 0.0) -> None:
        await self.stream.end(reason, resume_within_s)


class _Opener:
    """Attaches one CXone socket to its contact's call (connectors.nice.StreamOpener)."""

    def __init__(self, services: Services, bu: NiceBusinessUnit, live: dict[tuple[Any, str], _Live], wire: Any):
        self.services = services
        self.bu = bu
        self.live = live
        self.wire = wire
        self.entry: tuple[tuple[Any, str], _Live] | None = None
        self.log = log.bind(bu_id=bu.bu_id)

    async def _profile(self, params: dict[str, str]) -> Profile | None:
        store = self.services.store
        name = _param(params, PROFILE_KEYS)
        if name:
            p = await store.get_profile(self.bu.tenant_id, name)
            if p is not None:
                return p
            self.log.warning("nice_unknown_profile", profile=name[:128])
        if self.bu.profile_id:
            return await store.get_profile(self.bu.tenant_id, self.bu.profile_id)
        return None

    async def attach(self, hs: Handshake) -> StreamPort:
        self.log = self.log.bind(contact_id=hs.contact_id, perspective=hs.perspective)
        if hs.business_unit and hs.business_unit != self.bu.bu_id:
            # Informational only: NICE does not document the field, so a mismatch is logged, not refused.
            self.log.warning("nice_business_unit_differs", handshake_bu=hs.business_unit[:64])
        profile = await self._profile(hs.script_params)
        await self._refuse_if_elsewhere(hs, profile)
        # The connector fixes the call's owner: this profile's dialog (gateway/calls/dialog.py).
        dialog = self.services.dialogs.for_connector(self.bu.tenant_id, hs.contact_id, profile)
        key = (dialog.key, hs.perspective)
        try:
            stream = self._attach(dialog, hs)
        except DialogBusy:
            old = self.live.get(key)
            if old is None:
                raise ConnectorError("STREAM_BUSY", f"another stream already feeds the {hs.channel} channel of "
                                     f"contact {hs.contact_id}", CLOSE_TRY_AGAIN) from None
            # The same perspective again: CXone recovering a connection whose drop this side has
            # not seen yet. The newest socket wins; the old one ends as a hold would.
            self.log.info("nice_stream_replaced")
            await old.wire.close(code=CLOSE_NORMAL, message=b"replaced by a newer socket")
            try:
                await asyncio.wait_for(old.done.wait(), TAKEOVER_WAIT_S)
                stream = self._attach(dialog, hs)
            except (asyncio.TimeoutError, DialogBusy):
                raise ConnectorError("STREAM_BUSY", f"the {hs.perspective} stream of contact {hs.contact_id} is "
                                     "still open", CLOSE_TRY_AGAIN) from None
        entry = _Live(self.wire)
        self.live[key] = entry
        self.entry = (key, entry)
        self.log = self.log.bind(dialog_id=dialog.dialog_id)
        if hs.channel == "customer" and dialog.profile is not None:
            stream.track(asyncio.create_task(self._verify_automatically(dialog, hs)))
        return _NicePort(stream, hs.channel)

    async def _refuse_if_elsewhere(self, hs: Handshake, profile: Profile | None) -> None:
        """Several instances (docs/scale-out.md): a contact's call lives where its first socket
        landed. A socket of the same contact that a load balancer sends to another instance
        while a socket is open there cannot join that call (audio is not relayed between
        instances); made into a second call here, it would take the contact's directory entry,
        and the agent would follow an agent-only call. So it is refused, as a second direct
        stream is: STREAM_BUSY, 1013 (CXone may retry, and land where the call is). A call
        with no open socket there (on hold, ended, its instance gone) is taken over here. One
        process never refuses; an unowned call (no profile) is not checked."""
        registry = self.services.dialogs
        if profile is None or not isinstance(registry, ClusterCallRegistry):
            return
        try:
            # The owner's state now, not a mirror this instance may hold: a hold publishes
            # nothing, so a followed call's mirror still counts the sockets that closed.
            entry = await registry.owner_of(self.bu.tenant_id, hs.contact_id, profile)
            state = await registry.link.call_state(entry) if entry is not None else None
        except Exception as exc:           # noqa: BLE001 - directory or owner away: the call is served here
            self.log.warning("nice_directory_unavailable", error=type(exc).__name__)
            return
        if state is not None and int(state.get("streams", 0)) > 0:
            self.log.warning("nice_contact_elsewhere", owner=entry.instance if entry is not None else "")
            raise ConnectorError("STREAM_BUSY", f"another gateway instance holds the open sockets of contact "
                                 f"{hs.contact_id}: keep one contact's sockets on one instance (docs/scale-out.md)",
                                 CLOSE_TRY_AGAIN)

    def _attach(self, dialog: Dialog, hs: Handshake) -> StreamAttachment:
        # An RX socket carries no customer audio; the call has some if its TX feeds (or fed) it.
        customer = hs.channel == "customer" or dialog.busy(frozenset({"customer"})) or dialog.samples_in > 0
        return attach(dialog, connector="nice", metrics=self.services.metrics, channels=frozenset({hs.channel}),
                      customer_audio=customer, mixed=hs.mixed,
                      final_drain_s=max(0.5, self.services.settings.nice.final_results_timeout_s / 2))

    async def _verify_automatically(self, dialog: Dialog, hs: Handshake) -> None:
        """The script parameters name the caller: no agent action needed. Biokeys are the
        parameters that are the profile's biokeys (names matched case-insensitively); the
        enrolled users they find are verified. Without a user id among them, `Ani` (else the
        initial message's `ani`) is the user id if no biokey found anyone: Omilia's NICE
        integration enrols callers by their ANI. Started only if no verification runs."""
        profile = dialog.profile
        if profile is None or dialog.verification is not None:
            return
        defs = {b.key.lower(): b for b in profile.settings.biokeys}
        uid_def = next(b for b in profile.settings.biokeys if b.is_user_id)
        pairs: dict[str, str] = {}
        for k, v in hs.script_params.items():
            d = defs.get(k.lower())
            if d is not None and norm_key(k) not in TOKEN_KEYS + PROFILE_KEYS:
                pairs[d.key] = normalize_ani(v) if norm_key(d.key) == ANI_KEY else v
        ani_raw = _param(hs.script_params, (ANI_KEY,)) or hs.ani
        ani = normalize_ani(ani_raw) if ani_raw else ""
        users_svc = self.services.users
        try:
            biokeys = [BiokeyIn(key=k, value=v) for k, v in pairs.items()]
            found = await users_svc.search(profile, biokeys) if biokeys else []
            users = [u.user_id for u in found if u.status == "ENROLLED"][:MAX_USERS]
            if not users and ani and uid_def.key not in pairs:
                found = await users_svc.search(profile, [BiokeyIn(key=uid_def.key, value=ani)])
                users = [u.user_id for u in found if u.status == "ENROLLED"][:1]
            started = await self.services.verifier.start_automatic(dialog, users, [], users_svc) if users else []
        except (ValidationError, ApiError, KeyError, TypeError, ValueError) as exc:
            self.log.warning("nice_script_params_unusable", error=type(exc).__name__)
            return
        if started:
            self.log.info("nice_verification_started", users=len(started))
        else:
            self.log.info("nice_no_enrolled_caller", biokeys=sorted(pairs), ani=bool(ani))

    def ended(self, outcome: str) -> None:
        if self.entry is not None:
            key, entry = self.entry
            entry.done.set()
            if self.live.get(key) is entry:
                del self.live[key]
        self.services.metrics.inc("vbgw_nice_streams_total",
                                  outcome=outcome if outcome in ("completed", "disconnected") else "error")


@routes.route("GET", "/nice/ws", summary="NICE CXone CAAE audio relay (WebSocket; the business unit's API key in "
              "the nice.header header, Authorization: Bearer or ?token=; path set by nice.path)", auth="none",
              content="application/octet-stream", tags=("nice",), optional_query=("token",),
              query={"token": "The business unit's API key, if not in a header"})
async def nice_ws(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    cfg = request.app[SETTINGS].nice
    # A frame aiohttp's reader refuses (too big, text not UTF-8) still gets the protocol's answer.
    ws = ReportingWebSocket(report=nice.read_error_text, max_msg_size=2 * cfg.max_frame_bytes + 4096,
                            compress=False)
    if not ws.can_prepare(request).ok:
        raise bad_request("WEBSOCKET_REQUIRED", "this endpoint needs a WebSocket upgrade")
    bu = await _authenticate(request, services)
    await ws.prepare(request)
    async with open_socket(request.app, ws) as wire:
        await nice.serve(wire, _Opener(services, bu, request.app[LIVE], wire), cfg)
    return ws


@routes.route("GET", PANEL_PATH, summary="The agent widget as the CAAE app's agent panel: App URL "
              "`/nice/agent?params={scriptparams}`; redirects to /agent with the session token the script "
              "parameters carry (vbgwToken) and the caller (user_id, else Ani)", auth="session",
              content="text/html", tags=("nice", "widget"), query={"params": "CXone's script parameters (JSON)"})
async def nice_panel(request: web.Request) -> web.StreamResponse:
    """CXone puts the contact's script parameters into the App URL (`{scriptparams}`), not a
    token parameter of ours: this entry reads the session token a Studio REST action got from
    POST /api/token/ out of them, and sends the agent to the widget with it. The token is checked
    by the widget page itself (a bad one gets its explanation page)."""
    raw = request.query.get("params") or request.query.get("scriptparams") or ""
    try:
        params = nice.parse_script_params(raw) if raw else {}
    except ConnectorError as exc:
        raise bad_request("BAD_SCRIPT_PARAMS", exc.message) from None
    token = _param(params, TOKEN_KEYS) or request.query.get("token", "")
    if not token:
        raise ApiError(401, "UNAUTHORIZED", "the script parameters carry no session token (vbgwToken): a Studio "
                       "REST API action must get one from POST /api/token/ with masterId = the contact id")
    query = {"token": token}
    user = _param(params, USER_ID_KEYS) or (normalize_ani(a) if (a := _param(params, (ANI_KEY,))) else "")
    if user:
        query["users"] = user
    raise web.HTTPFound("/agent?" + urlencode(query), headers={"Referrer-Policy": "no-referrer",
                                                               "Cache-Control": "no-store"})

