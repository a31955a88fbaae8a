"""What the operator tools (`vbgw stream`, `vbgw audiohook-sim`) share as clients of a running
gateway: session tokens, results (server-sent events and on-demand), and one clear line for
each way a connection can fail, instead of a traceback."""
from __future__ import annotations

import asyncio
import json
import socket
from typing import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp


class ClientError(Exception):
    """A failure the tool reports as one line naming the cause (exit code 2)."""


def http_base(url: str) -> str:
    """http(s)://host:port of a gateway URL given as http(s)://... or ws(s)://... (path dropped)."""
    u = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme, u.scheme)
    if scheme not in ("http", "https") or not u.netloc:
        raise ClientError(f"not a gateway URL: {url!r} (expected e.g. http://127.0.0.1:8080)")
    return urlunsplit((scheme, u.netloc, "", "", ""))


def ws_base(url: str) -> str:
    base = http_base(url)
    return "ws" + base[len("http"):]


def connection_failure(exc: BaseException, url: str) -> str:
    """The cause of a failed connection in an operator's words."""
    u = urlsplit(url)
    where = u.netloc or url
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, (ConnectionRefusedError, socket.gaierror)):
        cause = cause.__cause__
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
    if isinstance(cause, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused (is the gateway running there? check the URL)"
    if isinstance(cause, socket.gaierror):
        return f"cannot connect to {where}: unknown host"
    if isinstance(exc, asyncio.TimeoutError):
        return f"cannot connect to {where}: timed out"
    return f"cannot connect to {where}: {cause}"


async def error_text(resp: aiohttp.ClientResponse) -> str:
    """The gateway's error message of a failed response ({"error": {"code", "message"}})."""
    try:
        body = await resp.json(content_type=None)
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict) and "code" in err:
            return f"{err['code']}: {err.get('message', '')}"
        return json.dumps(body)[:300]
    except (ValueError, aiohttp.ContentTypeError):
        return (await resp.text())[:300] or resp.reason or ""


async def create_token(http: aiohttp.ClientSession, base: str, pat: str, master_id: str, tenant: str,
                       profile: str, ani: str | None = None, provider: str = "GENESYS") -> str:
    """A session token for dialog `master_id` from a PAT (POST /api/token/)."""
    body = {"agentId": "vbgw-cli", "agentSkill": "cli", "masterId": master_id, "tenantId": tenant,
            "vbProfile": profile, "ccaasProvider": provider, "customProperties": {"Ani": ani} if ani else {}}
    async with http.post(f"{base}/api/token/", json=body, headers={"Authorization": f"Bearer {pat}"}) as r:
        if r.status != 200:
            raise ClientError(f"the gateway refused a session token ({r.status}): {await error_text(r)}")
        return (await r.json())["data"]["token"]


async def ondemand(http: aiohttp.ClientSession, base: str, token: str, users: list[str]) -> dict:
    async with http.get(f"{base}/verification/ondemand", params={"users": ",".join(users), "token": token}) as r:
        if r.status != 200:
            raise ClientError(f"verification failed ({r.status}): {await error_text(r)}")
        return await r.json()


async def sse(http: aiohttp.ClientSession, url: str, params: dict) -> AsyncIterator[tuple[str, dict]]:
    """(event name, JSON data) of a server-sent events stream until the server ends it."""
    async with http.get(url, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
        if r.status == 204:
            return
        if r.status != 200:
            raise ClientError(f"{urlsplit(url).path} refused ({r.status}): {await error_text(r)}")
        event, data = "message", []
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                yield event, json.loads("\n".join(data))
                if event == "end":
                    return
                event, data = "message", []


def describe(row: dict) -> str:
    """One verification result (SSE row or on-demand answer) as a line."""
    user = row.get("bio_plain_user_id") or row.get("bio_user_id") or row.get("user_id") or "?"
    kind = row.get("result_type", "")
    if row.get("bio_result") in (None, "") or kind == "STARTING":
        return f"{user}: {kind or 'no result'}"
    parts = [f"{user}: {row['bio_result']}"]
    if row.get("bio_score") is not None:
        parts.append(f"score {row['bio_score']:.3f}")
    if row.get("llr") is not None:
        parts.append(f"llr {row['llr']:.2f}")
    extra = ", ".join(x for x in (kind, f"{row.get('speech_millis', 0) / 1000:.1f} s of speech") if x)
    return " ".join(parts) + f" ({extra})"
