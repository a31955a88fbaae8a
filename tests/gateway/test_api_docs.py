"""GET /docs: the OpenAPI document rendered by Swagger UI, every asset served by the gateway
itself from the swagger-ui-py package (no CDN), and a real browser renders the operations."""
from __future__ import annotations

import asyncio
import os
import re
import shutil

import pytest


async def test_docs_page_and_its_assets_are_served_locally(gateway):
    gw = gateway
    async with gw.http.get(f"{gw.url}/docs") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        page = await r.text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert not [u for u in refs if "//" in u], refs              # nothing from another origin
    assets = [u for u in refs if u.startswith("/docs/assets/")]
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/docs/assets/docs-init.js"} <= set(assets)
    for url in assets:
        async with gw.http.get(f"{gw.url}{url}") as r:
            body = await r.read()
            assert r.status == 200, url
            assert r.content_type == {"js": "text/javascript", "css": "text/css", "png": "image/png"}[url.rsplit(".", 1)[1]]
            assert len(body) > (100_000 if "swagger-ui" in url else 100), url
    async with gw.http.get(f"{gw.url}/docs/assets/..%2fapp.py") as r:
        assert r.status == 404
    async with gw.http.get(f"{gw.url}/docs/assets/swagger-editor-bundle.js") as r:
        assert r.status == 404                                    # only the files the page needs


async def test_a_browser_renders_the_operations(gateway):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        msg = "no chromium (Debian's chromium package) to render /docs"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom",
        f"{gateway.url}/docs", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    dom, _ = await asyncio.wait_for(proc.communicate(), 120)
    dom = dom.decode()
    for path in ("/api/token/", "/verification/ondemand", "/voice_biometrics/v1/user/register"):
        assert f'data-path="{path}"' in dom, path
