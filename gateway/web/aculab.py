"""Aculab-style Voice Biometrics Users API (seed: aculab-vb-users-api.txt) under
/voice_biometrics/v1/user/: register, update, verify (PUT one WAV body, POST multipart
Source1..N, GET a one-time WebSocket URL), stats, exists, delete. Field names, paths and the
error envelope are the seed's; gateway/services/aculab.py decides (docs/aculab-users-api.md)."""
from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors import aculab_ws
from gateway.web.websocket import READ_ERROR_CLOSE_CODES, ReportingWebSocket, open_socket
from gateway.services.aculab import (
    MAX_SOURCES, UNNAMED, USER_ID_CHARS_MESSAGE, USER_ID_RE, AculabCosts, AculabUsers, Audio, KeyScope, authenticate,
    fetch_sources, new_application_instance_id, new_transaction_id,
)
from gateway.infra.fetch import UrlFetcher
from gateway.web.forms import form_parts
from gateway.web.routing import RouteTable
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.services.auth import token_hash
from gateway.services.wiring import Services
from gateway.errors import ApiError
from gateway.web.errors import client_error, internal_error, scrub

log = structlog.get_logger(__name__)

PREFIX = "/voice_biometrics/v1"
APPLICATION_STATUS = "/application_status"      # Aculab's path for it: a web service of its own
AUDIO_ACTIONS = ("register", "update", "verify")
ACTIONS = (*AUDIO_ACTIONS, "stats", "exists", "delete")
DOC_LINK = "https://www.aculab.com/cloud/web-services/voice-biometrics/users?target=service_action_tabs&tab-id="
# The seed's error texts start with these words ("Bad Request: ...", "Not found: ...").
PHRASES = {400: "Bad Request", 401: "Unauthorized", 404: "Not found", 405: "Method Not Allowed", 409: "Conflict",
           408: "Request Timeout", 413: "Request Entity Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Entity",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}
SOURCE_NAME_RE = re.compile(r"^Source[1-9][0-9]{0,2}$")
PARAMETER_RULES = {"sensitivity": "a number from -10.0 to 10.0"}
TICKET_TTL_S = 60.0
MAX_OPEN_TICKETS = 10000       # unused WebSocket URLs held in memory at once


def aculab_datetime(t: float) -> str:
    """The seed's date format: YYYY-MM-DD_hh:mm:ss, UTC."""
    return time.strftime("%Y-%m-%d_%H:%M:%S", time.gmtime(t))


# -- wire models -----------------------------------------------------------------------------
class UserParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: str = Field(pattern=USER_ID_RE.pattern)


class RegisterParams(UserParams):
    opt_in: bool = Field(default=False, description="vbgw: the user's explicit consent, needed to register a "
                                                   "user who opted out (OCP opt-out or an Aculab delete)")


class VerifyParams(UserParams):
    # allow_inf_nan: "nan" is not a sensitivity (it compared as neither above nor below the range)
    sensitivity: float = Field(default=0.0, ge=-10.0, le=10.0, allow_inf_nan=False)
    text_dependent: bool = Field(default=True, description="true: the registered passphrase AND the voice "
                                                           "(docs/passphrase.md); false: the voice alone")
    enable_pad: bool = False


PARAMS: dict[str, type[UserParams]] = {"register": RegisterParams, "update": UserParams, "verify": VerifyParams}


class StreamParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    stream_type: Literal["file"] = "file"


class SourceResult(BaseModel):
    source: str
    accepted: bool


class EnrolResult(BaseModel):
    application_instance_id: str
    transaction_id: str
    sources: list[SourceResult] | None = None


class PadDetected(BaseModel):
    type: Literal["TypeA", "TypeB", "TypeC"]


class VerifyResult(BaseModel):
    application_instance_id: str
    transaction_id: str
    verified: bool
    confidence: float
    sources: list[SourceResult] | None = None
    pad_detected: PadDetected | None = None


class StatsResult(BaseModel):
    user_group_name: str
    transaction_id: str
    registration_date: str
    update_date: str
    verification_date: str | None = Field(description="null when the user was never verified")
    verification_attempts: int
    verifications_passed: int
    verifications_failed: int


class ExistsResult(BaseModel):
    user_id: str
    transaction_id: str
    exists: bool


class DeleteResult(BaseModel):
    user_id: str
    transaction_id: str
    deleted: str


class ApplicationStatusParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    application_instance_id: str = Field(min_length=1, max_length=128)


class ApplicationStatusResult(BaseModel):
    application_instance_id: str
    cost: float = Field(description="US dollars: the price of the call (aculab_costs in the configuration)")
    costs_valid: bool = Field(description="false while the call's cost is not known yet (a WebSocket URL "
                                          "not used, or its call still running)")


class WebSocketUrl(BaseModel):
    application_instance_id: str
    url: str


class AculabErrorBody(BaseModel):
    code: str = Field(description="\"HTTP <status>\", or an engine error's code without the prefix "
                                  "(\"422\": insufficient speech)")
    text: str
    link: str
    datetime: str
    vbgw_code: str = Field(description="vbgw's stable error code (docs/aculab-users-api.md)")


class AculabRequestInfo(BaseModel):
    url: str
    datetime: str


class AculabErrorResponse(BaseModel):
    error: AculabErrorBody
    request: AculabRequestInfo


def _render(model: BaseModel, keep_nulls: bool = False) -> web.Response:
    return web.Response(text=model.model_dump_json(exclude_none=not keep_nulls), content_type="application/json")


def aculab_error(request: web.Request, received: float, action: str, status: int, code: str,
                 message: str, headers: dict[str, str] | None = None, engine_code: str | None = None) -> web.Response:
    """The seed's envelope. `engine_code`: an engine error (the document: "an underlying Voice
    Biometrics engine error that has no prefix"), whose text is its own description."""
    text = scrub(message) if engine_code else f"{PHRASES.get(status, 'Error')}: {scrub(message)}"
    body = AculabErrorResponse(
        error=AculabErrorBody(code=engine_code or f"HTTP {status}", text=text,
                              link=DOC_LINK + action, datetime=aculab_datetime(time.time()), vbgw_code=code),
        request=AculabRequestInfo(url=request.path, datetime=aculab_datetime(received)))
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="vbgw voice biometrics"'
    return web.Response(text=body.model_dump_json(), status=status, content_type="application/json",
                        headers=headers)


def _with_envelope(fn, action: str):
    """Every failure of this API in the seed's envelope, never a traceback."""
    @functools.wraps(fn)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        received = time.time()
        services = request.app[SERVICES]
        try:
            return await fn(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure gets the envelope
            err = client_error(exc, request.app[SETTINGS].server.max_body_bytes)
            if err is None:
                err = internal_error(request, exc)
            services.metrics.inc("vbgw_errors_total", code=err.code)
            # an engine error (InsufficientSpeech) travels in the HTTP status the document gives it
            return aculab_error(request, received, action, getattr(err, "http_status", err.status), err.code,
                                err.message, err.headers, getattr(err, "engine_code", None))
    return wrapped


# -- request parsing -------------------------------------------------------------------------
Params = TypeVar("Params", bound=BaseModel)


async def _params(request: web.Request, model: type[Params]) -> Params:
    """Parameters from the query string (and, for POST without audio, a urlencoded body).
    A parameter given twice (query and body included) is refused, never half-read: each names
    one value (user_id one user)."""
    pairs = list(request.query.items())
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        try:
            form = await request.post()
        except ValueError:          # UnicodeDecodeError: the body is not UTF-8
            raise ApiError(400, "MALFORMED_BODY", "the form body is not UTF-8 application/x-www-form-urlencoded "
                                                  "data") from None
        pairs += [(k, v) for k, v in form.items() if isinstance(v, str)]
    raw: dict[str, str] = {}
    for k, v in pairs:
        if k in raw and k in model.model_fields:
            code = "BAD_USER_ID" if k == "user_id" else "BAD_PARAMETER"
            raise ApiError(400, code, f"{k} is given more than once; give exactly one {k}")
        raw[k] = v
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "parameters"
        if name == "user_id":
            if err["type"] == "missing":
                raise ApiError(400, "USER_ID_REQUIRED", "the user_id parameter is required") from None
            raise ApiError(400, "BAD_USER_ID", USER_ID_CHARS_MESSAGE) from None
        if name in PARAMETER_RULES:         # Aculab's own wording: "Sensitivity must be from -10 to 10, received ."
            raise ApiError(400, "BAD_PARAMETER", f"{name} must be {PARAMETER_RULES[name]}, received "
                                                 f"{raw.get(name, '')[:40]!r}") from None
        raise ApiError(400, "BAD_PARAMETER", f"{name}: {err['msg']}") from None


async def _audio_parts(request: web.Request) -> list[tuple[str, bytes]]:
    """PUT: the body is one WAV file. POST: multipart/form-data parts Source1, Source2, ..."""
    urls = request.query.getall("wav_file_url", [])
    if urls:
        return await _url_parts(request, urls)
    if request.method == "PUT":
        return [(UNNAMED, await request.read())]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "POST the wav files as multipart/form-data parts named "
                                                      "Source1, Source2, ... (or PUT one wav file as the body)")
    parts: list[tuple[str, bytes]] = []
    async for part in form_parts(request):
        name = part.name
        if not SOURCE_NAME_RE.match(name):
            raise ApiError(400, "BAD_SOURCE_NAME", f"multipart part {name[:40]!r}: parts must be named "
                                                   "Source1, Source2, ...")
        if any(n == name for n, _ in parts):
            raise ApiError(400, "BAD_SOURCE_NAME", f"multipart part {name} appears twice")
        if len(parts) >= MAX_SOURCES:
            raise ApiError(400, "TOO_MANY_SOURCES", f"at most {MAX_SOURCES} wav files per request")
        parts.append((name, await part.read()))
    if not parts:
        raise ApiError(400, "FILE_REQUIRED", "no Source1 part with a wav file")
    return parts


def _sources(audio: Audio) -> list[SourceResult]:
    return [SourceResult(source=s.name, accepted=s.accepted) for s in audio.sources]


# -- wav_file_url (issue #16 item 3; docs/aculab-users-api.md "wav_file_url") ---------------
# The app's one fetcher for wav_file_url (gateway/infra/fetch.py, under [fetch]); tests set
# FETCH_RESOLVER (an aiohttp resolver for their host names) before the app starts.
URL_FETCHER: web.AppKey[UrlFetcher] = web.AppKey("aculab_url_fetcher", UrlFetcher)
FETCH_RESOLVER: web.AppKey[object] = web.AppKey("aculab_fetch_resolver", object)


async def fetcher_lifecycle(app: web.Application):
    fetcher = UrlFetcher(app[SETTINGS].fetch, resolver=app.get(FETCH_RESOLVER))   # type: ignore[arg-type]
    app[URL_FETCHER] = fetcher
    yield
    await fetcher.close()


def _refuse_urls_on_get(request: web.Request) -> None:
    """GET answers a WebSocket URL and the audio comes on the socket: a wav_file_url here
    would be silently unused, so it is refused."""
    if request.query.getall("wav_file_url", []):
        raise ApiError(400, "WAV_FILE_URL_NOT_FOR_GET", "wav_file_url cannot be used with GET (the audio is "
                                                        "streamed on the returned WebSocket); use POST with "
                                                        "wav_file_url instead")


async def _url_parts(request: web.Request, urls: list[str]) -> list[tuple[str, bytes]]:
    """The sources named by wav_file_url, downloaded through the SSRF-safe fetcher. Where the
    document takes them: POST (repeatable; verify with text_dependent true takes one), and
    PUT verify with an empty body (its example); never with audio in the body as well."""
    action = request.path.rsplit("/", 1)[-1]
    if request.method == "PUT" and action != "verify":
        raise ApiError(400, "WAV_FILE_URL_NOT_FOR_PUT", "wav_file_url is not supported for PUT, use POST instead")
    if request.content_type.startswith("multipart/") or (request.method == "PUT" and request.can_read_body
                                                         and await request.read()):
        raise ApiError(400, "AUDIO_TWICE", "supply the audio either as wav_file_url or in the request body, "
                                           "not both")
    if len(urls) > MAX_SOURCES:
        raise ApiError(400, "TOO_MANY_SOURCES", f"at most {MAX_SOURCES} wav files per request")
    if action == "verify" and len(urls) > 1 and (await _params(request, VerifyParams)).text_dependent:
        raise ApiError(400, "TOO_MANY_SOURCES", "with text_dependent true, verify takes one wav file; "
                                                "set text_dependent=false to send several")
    if request.method == "PUT" and len(urls) > 1:
        raise ApiError(400, "TOO_MANY_SOURCES", "PUT takes one wav_file_url; POST takes several")
    return await fetch_sources(request.app[URL_FETCHER], urls)


# -- one-time WebSocket tickets (the GET form) ----------------------------------------------
@dataclass
class Ticket:
    action: str
    scope: KeyScope
    params: UserParams
    instance_id: str
    expires: float


TICKETS: web.AppKey[dict] = web.AppKey("aculab_ws_tickets", dict)


def _issue_ticket(request: web.Request, action: str, scope: KeyScope, params: UserParams,
                  instance_id: str) -> str:
    tickets: dict[str, Ticket] = request.app[TICKETS]
    now = time.monotonic()
    for h in [h for h, t in tickets.items() if t.expires < now]:
        del tickets[h]
    if len(tickets) >= MAX_OPEN_TICKETS:
        raise ApiError(503, "TOO_MANY_OPEN_URLS", f"{MAX_OPEN_TICKETS} WebSocket URLs are waiting to be used; "
                                                  f"use them or let them expire ({TICKET_TTL_S:.0f} s)")
    token = secrets.token_urlsafe(32)
    tickets[token_hash(token)] = Ticket(action, scope, params, instance_id, now + TICKET_TTL_S)
    return token


# -- the actions -----------------------------------------------------------------------------
def aculab_users(services: Services) -> AculabUsers:
    return AculabUsers(services.store, services.engine, services.uploads, services.users, services.verifier,
                       services.fraud, services.metrics, services.settings.fraud.keep_verify_fingerprints,
                       services.settings.fraud.verify_fingerprint_retention_s, services.settings.aculab)


def aculab_costs(services: Services) -> AculabCosts:
    cfg = services.settings.aculab_costs
    return AculabCosts(services.store, {"register": cfg.register_usd, "update": cfg.update_usd, "verify": cfg.verify_usd},
                       cfg.keep_s, TICKET_TTL_S)


async def _authenticate(request: web.Request) -> KeyScope:
    return await authenticate(request.app[SERVICES].store, request.headers.get("Authorization", ""))


async def _run_audio_action(services: Services, action: str, scope: KeyScope, params: UserParams,
                            parts: list[tuple[str, bytes]], instance_id: str) -> tuple[str, dict]:
    """Run register/update/verify; (transaction id, result fields)."""
    users = aculab_users(services)
    tid = new_transaction_id()
    if action == "verify":
        assert isinstance(params, VerifyParams)
        if params.text_dependent and len(parts) > 1:
            raise ApiError(400, "TOO_MANY_SOURCES", "with text_dependent true, verify takes one wav file; "
                                                    "set text_dependent=false to send several")
        audio, verified, conf, pad = await users.verify(scope, params.user_id, parts, instance_id,
                                                        params.sensitivity, params.enable_pad, params.text_dependent)
        log.info("aculab_verified", profile_id=scope.profile.id, transaction_id=tid, verified=verified,
                 pad_type=pad["type"] if pad else None)
        return tid, {"verified": verified, "confidence": conf, "audio": audio,
                     "pad_detected": PadDetected(**pad) if pad else None}
    if action == "register":
        audio = await users.register(scope, params.user_id, parts, instance_id,
                                     opt_in=isinstance(params, RegisterParams) and params.opt_in)
    else:
        audio = await users.update(scope, params.user_id, parts, instance_id)
    log.info("aculab_enrolled", action=action, profile_id=scope.profile.id, transaction_id=tid,
             speech_ms=audio.embedding.speech_ms)
    return tid, {"audio": audio}


async def _audio_action(request: web.Request, action: str) -> web.Response:
    services = request.app[SERVICES]
    scope = await _authenticate(request)
    params = await _params(request, PARAMS[action])
    instance_id = new_application_instance_id()
    if request.method == "GET":
        await _params(request, StreamParams)
        _refuse_urls_on_get(request)
        token = _issue_ticket(request, action, scope, params, instance_id)
        await aculab_costs(services).issued(scope, instance_id, action)
        scheme = "wss" if request.secure else "ws"
        return _render(WebSocketUrl(application_instance_id=instance_id,
                                    url=f"{scheme}://{request.host}{PREFIX}/wss/{action}?auth_token={token}"))
    parts = await _audio_parts(request)
    tid, out = await _run_audio_action(services, action, scope, params, parts, instance_id)
    await aculab_costs(services).charged(scope, instance_id, action)
    # Sources are listed for POST (several files), and for verify only when text_dependent is false.
    sources = _sources(out["audio"]) if request.method == "POST" else None
    if isinstance(params, VerifyParams):                # action == "verify"
        if params.text_dependent:
            sources = None
        return _render(VerifyResult(application_instance_id=instance_id, transaction_id=tid,
                                    verified=out["verified"], confidence=out["confidence"], sources=sources,
                                    pad_detected=out["pad_detected"] if params.enable_pad else None))
    return _render(EnrolResult(application_instance_id=instance_id, transaction_id=tid, sources=sources))


async def _stats(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    scope = await _authenticate(request)
    params = await _params(request, UserParams)
    user = await aculab_users(services).registered_user(scope.profile, params.user_id)
    if user is None:
        raise ApiError(404, "NOT_REGISTERED", f"user Id {params.user_id} is not a registered user.")
    st = await services.store.verification_stats(scope.profile.id, params.user_id)
    # verification_date: null before the first verification (issue #16 item 6: "" broke date parsers)
    # registration: the latest (re-)admission, so a register after a delete starts afresh
    registered_ms = max(user.created_ms, user.opt_in_ts or 0)
    return _render(StatsResult(
        user_group_name=scope.profile.name, transaction_id=new_transaction_id(),
        registration_date=aculab_datetime(registered_ms / 1000), update_date=aculab_datetime(user.last_update_ms / 1000),
        verification_date=aculab_datetime(st.last_ms / 1000) if st else None,
        verification_attempts=st.attempts if st else 0, verifications_passed=st.passed if st else 0,
        verifications_failed=st.attempts - st.passed if st else 0), keep_nulls=True)


async def _exists(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    scope = await _authenticate(request)
    params = await _params(request, UserParams)
    user = await aculab_users(services).registered_user(scope.profile, params.user_id)
    if user is None:          # the document's example: an unknown user is a 404, as for stats and delete
        raise ApiError(404, "NOT_REGISTERED", f"user Id {params.user_id} is not a registered user.")
    return _render(ExistsResult(user_id=params.user_id, transaction_id=new_transaction_id(), exists=True))


async def _application_status(request: web.Request) -> web.Response:
    """Aculab's `application_status` for the calls of this API (the document's "Charging
    information"): the cost of the call an application_instance_id names, and whether it is
    final. A key sees only its own VB profile's calls."""
    services = request.app[SERVICES]
    scope = await _authenticate(request)
    params = await _params(request, ApplicationStatusParams)
    found = await aculab_costs(services).status(scope, params.application_instance_id)
    return _render(ApplicationStatusResult(application_instance_id=found.instance_id, cost=found.cost,
                                           costs_valid=found.costs_valid))


async def _application_status_methods(request: web.Request) -> web.Response:
    raise ApiError(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.path}",
                   headers={"Allow": "GET, POST"})


async def _delete(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    scope = await _authenticate(request)
    params = await _params(request, UserParams)
    tid = new_transaction_id()
    user = await aculab_users(services).delete(scope, params.user_id, tid)
    log.info("aculab_deleted", profile_id=scope.profile.id, transaction_id=tid)
    return _render(DeleteResult(user_id=params.user_id, transaction_id=tid,
                                deleted=aculab_datetime((user.opt_out_ts or 0) / 1000)))


# -- routes ----------------------------------------------------------------------------------
class AculabRouteTable(RouteTable):
    def install(self, app: web.Application) -> None:
        super().install(app)
        app[TICKETS] = {}
        app.cleanup_ctx.append(fetcher_lifecycle)
        app.router.add_route("GET", PREFIX + "/wss/{action}", stream)
        app.router.add_route("*", APPLICATION_STATUS, _with_envelope(_application_status_methods,
                                                                     "application_status"))
        # Anything else under the prefix answers in this API's envelope too.
        app.router.add_route("*", PREFIX + "/{tail:.*}", _with_envelope(_fallback, "users"))


routes = AculabRouteTable()
_USER_ID_DOC = "The user's id: a-z A-Z 0-9 . - (1 to 128 characters)"
_VERIFY_QUERY = {"sensitivity": "-10.0 to 10.0 (default 0.0): positive values make passing harder",
                 "text_dependent": "true (default): the registered passphrase and the voice; false: the voice alone",
                 "enable_pad": "true or false (default): include pad_detected when an attack is detected"}
_URL_QUERY = {"wav_file_url": "a URL of a wav file to download instead of audio in the body (repeatable on POST; "
                               "hosts on fetch.allowed_hosts only: docs/url-sources.md)"}
_STREAM_QUERY = {"stream_type": "GET only: \"file\" (the only type)",
                 "format": "GET only: ignored for stream_type file", "sample_rate": "GET only: ignored"}
_SUMMARIES = {
    "register": "Register a user from audio (PUT: one WAV body; POST: multipart Source1..N; GET: WebSocket URL)",
    "update": "Update a registered user's voice model from audio (PUT, POST or GET as register)",
    "verify": "Verify audio against a registered user (PUT, POST or GET as register)",
    "stats": "Registration, update and verification statistics of a user",
    "exists": "Whether a user is registered",
    "delete": "Delete a user: irrevocably removes the voiceprints, fingerprints and biokeys",
}
_HANDLERS = {"stats": _stats, "exists": _exists, "delete": _delete}


def _add(method: str, action: str, handler, response: type[BaseModel], query: dict[str, str]) -> None:
    wrapped = _with_envelope(handler, action)
    wrapped.__name__ = f"aculab_{action}_{method.lower()}"      # one operationId per method
    routes.route(method, f"{PREFIX}/user/{action}", summary=_SUMMARIES[action], auth="user_group_key",
                 response=response, query={"user_id": _USER_ID_DOC, **query},
                 optional_query=tuple(k for k in query), error=AculabErrorResponse, tags=("aculab",),
                 form={"Source1": "WAV file", "Source2": "more WAV files..."} if method == "POST" and
                 action in AUDIO_ACTIONS else None)(wrapped)


_REGISTER_QUERY = {"opt_in": "vbgw: true records the user's explicit consent; needed to register a user who "
                              "opted out (OCP opt-out or delete), 409 USER_OPTED_OUT otherwise"}
for _action in AUDIO_ACTIONS:
    _handler = functools.partial(_audio_action, action=_action)
    _extra = {"verify": _VERIFY_QUERY, "register": _REGISTER_QUERY}.get(_action, {})
    _add("PUT", _action, _handler, VerifyResult if _action == "verify" else EnrolResult,
         {**_extra, **_URL_QUERY} if _action == "verify" else _extra)
    _add("POST", _action, _handler, VerifyResult if _action == "verify" else EnrolResult, {**_extra, **_URL_QUERY})
    _add("GET", _action, _handler, WebSocketUrl, {**_extra, **_STREAM_QUERY})
_RESPONSES: dict[str, type[BaseModel]] = {"stats": StatsResult, "exists": ExistsResult, "delete": DeleteResult}
for _action, _h in _HANDLERS.items():
    _response = _RESPONSES[_action]
    _add("GET", _action, _h, _response, {})
    _add("POST", _action, _h, _response, {})
for _method in ("GET", "POST"):
    _status = _with_envelope(_application_status, "application_status")
    _status.__name__ = f"aculab_application_status_{_method.lower()}"
    routes.route(_method, APPLICATION_STATUS, summary="The cost of a register, update or verify call, by its "
                 "application_instance_id (costs_valid: whether it is final)", auth="user_group_key",
                 response=ApplicationStatusResult, query={"application_instance_id": "from the call's answer"},
                 error=AculabErrorResponse, tags=("aculab",))(_status)


async def _fallback(request: web.Request) -> web.Response:
    tail = request.match_info["tail"]
    if tail.startswith("user/") and tail[5:] in ACTIONS:
        allow = "GET, POST, PUT" if tail[5:] in AUDIO_ACTIONS else "GET, POST"
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.path}",
                       headers={"Allow": allow})
    if tail.startswith("wss/") and tail[4:] in AUDIO_ACTIONS:      # the one-time WebSocket URLs: GET only
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.path}",
                       headers={"Allow": "GET"})
    raise ApiError(404, "NOT_FOUND", f"no service {request.path}")


# -- the WebSocket stream (GET form) ---------------------------------------------------------
# Aculab's WebSocket error table (issue #16 item 4): code -> reason. 51 is every reason an audio
# file is refused (no data, unknown format, not mono, rate or bit depth too low, too long).
WS_REASONS = {50: "Bad Request", 51: "Unusable audio", 52: "Audio does not contain sufficient speech",
              60: "A Voice Biometric server exception has occurred",
              61: "Service temporarily disabled for this key or account"}


def websocket_code(status: int) -> int:
    """The WebSocket error code of an error that HTTP answers with `status`."""
    if status in (413, 415):
        return 51              # the audio itself: over the size limit or not a usable WAV file
    if status == 422:
        return 52
    if status == 503:
        return 61
    return 60 if status >= 500 else 50


def websocket_reject(exc: ApiError, action: str) -> dict:
    """The reject event: the table's code and reason; the message as the document's example
    words a bad request ("Bad API request, register: user_id Bob is already present.");
    `vbgw_code` is vbgw's stable code, as in the HTTP envelope."""
    # Too little speech is HTTP 400 with Aculab's engine code 422 (InsufficientSpeech), 52 here.
    code = 52 if exc.code == "LOW_DATA" else websocket_code(exc.status)
    message = f"Bad API request, {action}: {exc.message}" if code == 50 else exc.message
    return {"event": "reject", "reason": WS_REASONS[code], "message": message, "code": code, "vbgw_code": exc.code}


def _read_error(close_code: int, max_bytes: int) -> ApiError:
    """The reject for a frame aiohttp's reader refused (gateway.web.websocket)."""
    if close_code == 1009:
        return ApiError(413, "BODY_TOO_LARGE", f"a message over {max_bytes} bytes")
    return ApiError(400, "BAD_MESSAGE", READ_ERROR_CLOSE_CODES.get(close_code, "unreadable message"))


async def stream(request: web.Request) -> web.StreamResponse:
    """One-time URL from GET register/update/verify: binary WAV data, then
    {"event": "audio_sent"}; answers one event ({"event": <action>, ...} or "reject") and closes
    (the protocol: connectors/aculab_ws.py)."""
    received = time.time()
    action = request.match_info["action"]
    tickets: dict[str, Ticket] = request.app[TICKETS]
    key = token_hash(request.query.get("auth_token", ""))
    ticket: Ticket | None = tickets.get(key)
    if ticket is None or ticket.action != action or ticket.expires < time.monotonic():
        return aculab_error(request, received, action if action in ACTIONS else "users", 401, "UNAUTHORIZED",
                            "the auth_token is missing, used, expired or for another service")
    max_bytes = request.app[SETTINGS].server.max_body_bytes
    idle_s = request.app[SETTINGS].server.first_message_timeout_s
    ws = ReportingWebSocket(report=lambda code: json.dumps(websocket_reject(_read_error(code, max_bytes), action)),
                            heartbeat=30.0, max_msg_size=max_bytes)
    # A plain GET (a browser, a link checker) is refused before the token is used up: only an
    # upgrade takes the one-time URL (issue #16 item 9).
    if not ws.can_prepare(request).ok:
        return aculab_error(request, received, action, 400, "WEBSOCKET_REQUIRED", "this URL needs a WebSocket upgrade")
    if tickets.pop(key, None) is None:              # another upgrade took it meanwhile
        return aculab_error(request, received, action, 401, "UNAUTHORIZED",
                            "the auth_token is missing, used, expired or for another service")
    services = request.app[SERVICES]
    costs = aculab_costs(services)
    await costs.started(ticket.instance_id)
    await ws.prepare(request)
    scope, params = ticket.scope, ticket.params
    answered = False

    async def run(audio: bytes) -> dict:
        nonlocal answered
        tid, out = await _run_audio_action(services, action, scope, params, [(UNNAMED, audio)], ticket.instance_id)
        answered = True
        reply = {"event": action, "transaction_id": tid, "user_id": params.user_id}
        if action == "verify":
            assert isinstance(params, VerifyParams)
            reply.update(verified=out["verified"], confidence=out["confidence"])
            if out["pad_detected"] is not None and params.enable_pad:
                reply["pad_detected"] = out["pad_detected"].model_dump()
        return reply

    def reject(exc: BaseException) -> dict:
        if isinstance(exc, aculab_ws.StreamRefused):
            return websocket_reject(ApiError(exc.status, exc.code, exc.message), action)
        if isinstance(exc, ApiError):
            services.metrics.inc("vbgw_errors_total", code=exc.code)
            return websocket_reject(exc, action)
        return websocket_reject(internal_error(request, exc), action)

    try:
        async with open_socket(request.app, ws) as wire:
            await aculab_ws.serve(wire, run, reject, max_bytes, idle_s)
    finally:
        await asyncio.shield(costs.finished(ticket.instance_id, action, answered))
    return ws
