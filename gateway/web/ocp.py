"""OCP standalone Voice Biometrics API (seed: ocp-vb-standalone-api.txt): REST handlers (the
direct audio stream: gateway/web/stream.py). Handlers parse and render; the services decide."""
from __future__ import annotations

import re

import structlog
from aiohttp import web

from gateway.errors import ApiError, bad_request, forbidden, not_found
from gateway.infra.logging import token_ref
from gateway.services.auth import PAT_PREFIX
from gateway.services.verification import MAX_USERS
from gateway.services.wiring import Services
from gateway.store.base import BIOKEY_CHARS_MESSAGE, BIOKEY_RE, User
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.cluster import forward_to_owner
from gateway.web.forms import form_parts
from gateway.web import recordings as recordings_web
from gateway.web.http_auth import bearer, caller, pat
from gateway.web.routing import RouteTable, json_response, parse_json
from gateway.web.schemas import (
    BatchEnrolResponse, DataMessage, EnrolRequest, OnDemandResponse, SearchRequest, SearchResponse, SearchStatus,
    TokenData, TokenRequest, TokenResponse, UserIdRequest, UserInfo,
)

log = structlog.get_logger(__name__)
routes = RouteTable()


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


def _user_info(u: User | None, user_id: str) -> UserInfo:
    if u is None:
        return UserInfo(user_id=user_id, status="NOT_ENROLLED", last_update=None, opt_out_ts=None, opt_in_ts=None)
    return UserInfo(user_id=u.user_id, status=u.status, last_update=u.last_update_ms,
                    opt_out_ts=u.opt_out_ts, opt_in_ts=u.opt_in_ts)


def users_param(request: web.Request) -> list[str]:
    # `users=a,b` and the repeated form `users=a&users=b` mean the same: no value is dropped.
    return parse_users(",".join(request.query.getall("users", [])))


def parse_users(raw: str) -> list[str]:
    """`users` of a verification request (query parameter or Socket.IO payload)."""
    users = [u.strip() for u in raw.split(",") if u.strip()]
    if not users:
        raise bad_request("USERS_REQUIRED", f"give users=<user id>[,<user id>...] (1 to {MAX_USERS})")
    if len(users) > MAX_USERS:
        raise bad_request("TOO_MANY_USERS", f"at most {MAX_USERS} users per verification")
    for u in users:
        if not BIOKEY_RE.match(u):
            raise bad_request("BAD_USER_ID", "user ids: " + BIOKEY_CHARS_MESSAGE)
    return list(dict.fromkeys(users))


def _max_json(request: web.Request) -> int:
    return request.app[SETTINGS].server.max_json_bytes


@routes.route("POST", "/api/token/", summary="Initiate session: a session token for one call",
              auth="pat", body=TokenRequest, response=TokenResponse, tags=("session",), aliases=("/api/token",))
async def create_token(request: web.Request) -> web.Response:
    body_pat = await pat(request)
    body = await parse_json(request, TokenRequest, _max_json(request))
    token = await _services(request).sessions.create_token(body_pat, body)
    log.info("session_created", dialog_id=body.masterId, token_ref=token_ref(token))
    return json_response(TokenResponse(data=TokenData(token=token)))


@routes.route("GET", "/users/info/{userID}", summary="User status", auth="session", response=UserInfo,
              tags=("users",))
async def user_info(request: web.Request) -> web.Response:
    c = await caller(request)
    uid = request.match_info["userID"]
    if not BIOKEY_RE.match(uid):
        raise bad_request("BAD_USER_ID", "user ids: " + BIOKEY_CHARS_MESSAGE)
    return json_response(_user_info(await _services(request).users.user(c, uid), uid))


@routes.route("POST", "/users/search", summary="Search users of the session's profile by biokeys",
              auth="session", body=SearchRequest, response=SearchResponse, tags=("users",))
async def search_users(request: web.Request) -> web.Response:
    c = await caller(request)
    body = await parse_json(request, SearchRequest, _max_json(request))
    found = await _services(request).users.search(c.profile, body.biokeys)
    status: SearchStatus = "NOT_FOUND" if not found else "FOUND_ONE" if len(found) == 1 else "FOUND_MANY"
    return json_response(SearchResponse(users=[_user_info(u, u.user_id) for u in found], response_status=status))


@routes.route("POST", "/enrol", summary="Enrol a user from the session's accumulated clean speech",
              auth="session", body=EnrolRequest, response=DataMessage, tags=("enrolment",))
async def enrol(request: web.Request) -> web.Response:
    c = await caller(request)
    body = await parse_json(request, EnrolRequest, _max_json(request))
    if (forwarded := await forward_to_owner(request, c)) is not None:
        return forwarded                   # the call's audio is on another instance (docs/scale-out.md)
    user, speech = await _services(request).users.enrol_from_dialog(c, body.biokeys, body.user_id, body.opt_in)
    log.info("enrolled", dialog_id=c.session.master_id, speech_ms=speech)
    return json_response(DataMessage(data="Enroll user accepted"))


@routes.route("POST", "/users/optout", summary="Opt a user out: irrevocably deletes audio, voiceprints, biokeys",
              auth="session", body=UserIdRequest, response=DataMessage, tags=("users",))
async def opt_out(request: web.Request) -> web.Response:
    c = await caller(request)
    body = await parse_json(request, UserIdRequest, _max_json(request))
    await _services(request).users.opt_out(c.profile, body.user_id, c.session.master_id)
    log.info("opted_out", dialog_id=c.session.master_id)
    return json_response(DataMessage(data="User opted-out"))


@routes.route("POST", "/users/optin", summary="Opt a user back in (explicit consent); enrolment is then possible",
              auth="session", body=UserIdRequest, response=DataMessage, tags=("users",))
async def opt_in(request: web.Request) -> web.Response:
    c = await caller(request)
    body = await parse_json(request, UserIdRequest, _max_json(request))
    await _services(request).users.opt_in(c.profile, body.user_id)
    return json_response(DataMessage(data="User opted-in"))


@routes.route("GET", "/verification/ondemand", summary="One verification now; the best of up to 5 users",
              auth="session", response=OnDemandResponse, tags=("verification",),
              query={"users": "User ids (1 to 5): users=a,b or users=a&users=b", "token": "Session token"})
async def verify_ondemand(request: web.Request) -> web.Response:
    c = await caller(request)
    users = users_param(request)
    if (forwarded := await forward_to_owner(request, c)) is not None:
        return forwarded                   # the call's audio is on another instance (docs/scale-out.md)
    services = _services(request)
    dialog = services.sessions.dialog_of(c, create=True)       # no audio yet: NO_DATA, honestly
    assert dialog is not None
    best = await services.verifier.ondemand(dialog, users)
    return json_response(OnDemandResponse(
        bio_result=best.bio_result, bio_score=best.bio_score, bio_user_id=best.bio_user_id,
        bio_plain_user_id=best.user_id, error_type=best.error_type, user_changed=best.user_changed,
        speech_millis=best.speech_millis))


_BIOKEY_FIELD = re.compile(r"^biokeys\[([0-9A-Za-z_+\-]{1,128})\]$")


@routes.route("POST", "/api/enroll", summary="Batch enrolment from a recording (.wav, .mp4) or, as a job "
              "answered 202, from the CCaaS provider's recording of ccaas_session_id (docs/recordings.md)",
              auth="pat_or_session", response=BatchEnrolResponse, responses={202: recordings_web.EnrolJobAccepted},
              tags=("enrolment",), aliases=("/agent-vb-mw/api/enroll",),
              form={"file": "Recording: .wav (Genesys) or .mp4/.m4a (NICE)", "profile_id": "VB profile id or name",
                    "tenant_id": "Tenant id or name", "ccaas_provider": "GENESYS, NICE_IN_CONTACT...",
                    "ccaas_session_id": "Call id: fetch its recording from the provider (a job) when no file",
                    "biokeys[user_id]": "Required", "biokeys[<key>]": "More biokeys"})
async def batch_enrol(request: web.Request) -> web.Response:
    services = _services(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send multipart/form-data")
    fields: dict[str, str] = {}
    biokeys: dict[str, str] = {}
    audio: bytes | None = None
    filename = ""
    async for part in form_parts(request):
        name = part.name
        if name == "file":
            filename = part.filename
            audio = await part.read()
            continue
        value = (await part.text()).strip()
        m = _BIOKEY_FIELD.match(name)
        if m:
            if not BIOKEY_RE.match(value):
                raise bad_request("BAD_BIOKEY", f"biokeys[{m.group(1)}]: {BIOKEY_CHARS_MESSAGE}")
            biokeys[m.group(1)] = value
        elif name.startswith("biokeys["):
            raise bad_request("BAD_BIOKEY", f"malformed biokey field name {name!r}")
        else:
            fields[name] = value

    tok = bearer(request) or ""
    if tok.startswith(PAT_PREFIX):
        tenant, profile = await services.sessions.pat_scope(await pat(request), fields.get("tenant_id", ""),
                                                            fields.get("profile_id", ""))
        if tenant is None:
            raise forbidden("tenant_id is missing or not this token's tenant")
        if profile is None:
            raise not_found("PROFILE_NOT_FOUND", "no such VB profile in this token's group")
        dialog_id = fields.get("ccaas_session_id") or f"batch-{filename}"
        provider = fields.get("ccaas_provider", "")
    else:
        c = await caller(request)
        profile, dialog_id = c.profile, c.session.master_id
        provider = fields.get("ccaas_provider") or c.session.ccaas_provider
    uid_key = next(b.key for b in profile.settings.biokeys if b.is_user_id)
    user_id = biokeys.pop("user_id", None) or biokeys.pop(uid_key, None)
    if not user_id:
        raise bad_request("USER_ID_REQUIRED", "biokeys[user_id] is required")
    if audio is None and fields.get("ccaas_session_id"):
        # fetched from the provider as a job: 202 and a status URL (gateway/web/recordings.py)
        return await recordings_web.submit_fetch(request, profile, provider, fields["ccaas_session_id"],
                                                 user_id, biokeys)
    if audio is None or not audio:
        raise bad_request("FILE_REQUIRED", "a non-empty file field is required")
    # .wav or .mp4, the customer's channel, decoded, embedded and kept block by block, after
    # live calls' work (gateway/services/uploads.py, gateway/services/recordings/media.py)
    user, speech = await services.users.enrol_from_upload(
        profile, user_id, biokeys, audio, dialog_id, keep_audio=True,
        source=recordings_web.recording_source(request, provider, filename))
    log.info("batch_enrolled", dialog_id=dialog_id, speech_ms=speech)
    return json_response(BatchEnrolResponse(data="Enroll user accepted", user_id=user.user_id, speech_millis=speech))
