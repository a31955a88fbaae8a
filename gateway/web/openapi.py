"""OpenAPI 3.1 document built from the route table's pydantic models."""
from __future__ import annotations

from http import HTTPStatus
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from gateway.web.routing import RouteSpec
from gateway.web.errors import ErrorResponse

_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "pat": [{"pat": []}],
    "session": [{"session": []}, {"session_query": []}],
    "pat_or_session": [{"pat": []}, {"session": []}],
    "metrics": [{"metrics": []}],
    "user_group_key": [{"user_group_key": []}],
    "none": [],
}


def sw_version() -> str:
    """The installed vbgw's version (the document's info.version)."""
    try:
        return metadata.version("vbgw")
    except metadata.PackageNotFoundError:
        return "0.1.0"


def build_openapi(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in js.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = js
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    err = ref(ErrorResponse)
    paths: dict[str, Any] = {}
    for s in specs:
        op: dict[str, Any] = {"summary": s.summary, "operationId": s.handler.__name__,
                              "security": _SECURITY[s.auth], "tags": list(s.tags)}
        params = [{"name": n, "in": "query", "required": n != "Last-Event-ID" and n not in s.optional_query,
                   "description": d,
                   "schema": {"type": "string"}} for n, d in s.query.items()]
        params += [{"name": seg.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                   for seg in s.path.split("/") if seg.startswith("{")]
        if params:
            op["parameters"] = params
        if s.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(s.body)}}}
        if s.form is not None:
            op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "properties": {k: ({"type": "string", "format": "binary"} if k == "file"
                                                     else {"type": "string", "description": v})
                                                 for k, v in s.form.items()}}}}}
        ok: dict[str, Any] = {"description": "OK"}
        if s.response is not None:
            ok["content"] = {s.content: {"schema": ref(s.response)}}
        elif s.content != "application/json":
            ok["content"] = {s.content: {"schema": {"type": "string"}}}
        op["responses"] = {"200": ok}
        for status, model in sorted(s.responses.items()):
            op["responses"][str(status)] = {"description": HTTPStatus(status).phrase,
                                            "content": {"application/json": {"schema": ref(model)}}}
        op["responses"]["default"] = {"description": "Error", "content": {
            "application/json": {"schema": ref(s.error) if s.error is not None else err}}}
        paths.setdefault(s.path, {})[s.method.lower()] = op
        for i, alias in enumerate(s.aliases, start=1):
            paths.setdefault(alias, {})[s.method.lower()] = {
                **op, "operationId": f"{op['operationId']}_alias{i}", "summary": f"Alias of {s.path}"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "vbgw: voice-biometrics gateway", "version": version,
                 "description": "OCP-style standalone Voice Biometrics API. Errors are "
                                "{\"error\": {\"code\", \"message\"}} with a stable code."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "pat": {"type": "http", "scheme": "bearer", "description": "Personal access token"},
            "session": {"type": "http", "scheme": "bearer", "description": "Session token from POST /api/token/"},
            "session_query": {"type": "apiKey", "in": "query", "name": "token"},
            "metrics": {"type": "http", "scheme": "bearer", "description": "Metrics token"},
            "user_group_key": {"type": "http", "scheme": "basic",
                               "description": "Aculab Users API: cloudID/username and a user group key"},
        }},
    }
