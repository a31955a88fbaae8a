"""A small route table: each handler declares its method, path, auth and pydantic models,
so the OpenAPI document is generated from the very models the handlers use."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from connectors import safejson
from gateway.errors import ApiError

M = TypeVar("M", bound=BaseModel)
Auth = Literal["none", "pat", "session", "pat_or_session", "metrics", "user_group_key"]


@dataclass
class RouteSpec:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    auth: Auth
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    query: dict[str, str] = field(default_factory=dict)   # name -> description
    content: str = "application/json"                     # response media type
    form: dict[str, str] | None = None                    # multipart fields
    tags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    optional_query: tuple[str, ...] = ()                  # query parameters that may be left out
    error: type[BaseModel] | None = None                  # error body, if not ErrorResponse
    # other successful answers than 200, by status (e.g. {202: JobAccepted} for a request that
    # may also be answered by queuing a job); their body is JSON
    responses: dict[int, type[BaseModel]] = field(default_factory=dict)


class RouteTable:
    def __init__(self):
        self.specs: list[RouteSpec] = []

    def route(self, method: str, path: str, *, summary: str, auth: Auth, body=None, response=None,
              query=None, content="application/json", form=None, tags=(), aliases=(), optional_query=(),
              error=None, responses=None):
        for status in responses or {}:
            if not (200 <= status < 300 and status != 200):
                raise ValueError(f"{method} {path}: responses= declares other 2xx answers than 200, not {status}")

        def deco(fn):
            self.specs.append(RouteSpec(method, path, fn, summary, auth, body, response, query or {},
                                        content, form, tags, aliases, tuple(optional_query), error,
                                        dict(responses or {})))
            return fn
        return deco

    def install(self, app: web.Application) -> None:
        for s in self.specs:
            for p in (s.path, *s.aliases):
                app.router.add_route(s.method, p, s.handler)


# A body already read (a signed request between instances: web/cluster.py). A typed request
# key where aiohttp has them (3.13+; a plain string key makes 3.14 warn NotAppKeyWarning).
RAW_BODY: Any = web.RequestKey("vbgw_raw_body", bytes) if hasattr(web, "RequestKey") else "vbgw_raw_body"


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, at most max_bytes (413 BODY_TOO_LARGE), read once per request."""
    if RAW_BODY in request:
        return request[RAW_BODY]
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "BODY_TOO_LARGE", f"JSON bodies are limited to {max_bytes} bytes")
    # read() returns what has arrived so far: a body in several TCP segments needs a loop
    raw = bytearray()
    while len(raw) <= max_bytes and (chunk := await request.content.read(max_bytes + 1 - len(raw))):
        raw += chunk
    if len(raw) > max_bytes:
        raise ApiError(413, "BODY_TOO_LARGE", f"JSON bodies are limited to {max_bytes} bytes")
    request[RAW_BODY] = bytes(raw)
    return request[RAW_BODY]


async def parse_json(request: web.Request, model: type[M], max_bytes: int) -> M:
    """A JSON body validated into `model`: at most max_bytes, UTF-8, nested at most
    connectors.safejson.MAX_DEPTH levels. Every failure is a 4xx with a stable code."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "BODY_TOO_LARGE", f"JSON bodies are limited to {max_bytes} bytes")
    raw = await read_body(request, max_bytes)
    try:
        data: Any = safejson.loads(raw or b"null")
    except safejson.JsonInputError as exc:
        raise ApiError(400, exc.code, f"the body is {exc.message}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "VALIDATION_ERROR", validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    """The first validation error as `location: message` (never the offending value)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{loc}: {err['msg']}"


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")
