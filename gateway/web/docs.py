"""`GET /docs`: the OpenAPI document rendered as a browsable reference (Swagger UI).

Swagger UI's files come from the `swagger-ui-py` wheel (Apache-2.0), which ships the Swagger UI
5 distribution (OpenAPI 3.1 support) as package data, and are served by the gateway itself from
`/docs/assets/`: no CDN, which neither an air-gapped install nor an agent desktop may reach.
The page and its assets carry no tenant data, like /openapi.json, so they need no token."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from aiohttp import web

from gateway.web.routing import RouteTable

routes = RouteTable()
OWN = files("gateway.web") / "apidocs"
# name -> (content type, where it comes from)
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "docs-init.js": "text/javascript",
}
# Swagger UI sets inline styles; scripts only from here; requests (the document, "try it out")
# only to this origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def swagger_ui_dir() -> Path:
    """The Swagger UI distribution inside the installed swagger-ui-py package."""
    import swagger_ui
    return Path(swagger_ui.__file__).resolve().parent / "static"


def _asset(name: str) -> bytes:
    if name == "docs-init.js":
        return (OWN / name).read_bytes()
    return (swagger_ui_dir() / name).read_bytes()


@routes.route("GET", "/docs", summary="API reference: the OpenAPI document rendered (Swagger UI)", auth="none",
              content="text/html", tags=("system",))
async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=(OWN / "index.html").read_bytes(), content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer",
                                 "X-Content-Type-Options": "nosniff"})


@routes.route("GET", "/docs/assets/{name}", summary="API reference assets (Swagger UI, served locally)",
              auth="none", content="application/octet-stream", tags=("system",))
async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    ctype = ASSETS[name]
    return web.Response(body=_asset(name), content_type=ctype, charset=None if ctype == "image/png" else "utf-8",
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
