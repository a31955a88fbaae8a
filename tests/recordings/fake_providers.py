"""Local stand-ins for the CCaaS recording APIs, speaking their documented request and response
shapes (docs/recordings.md lists the sources), with scriptable failures.

Genesys Cloud (one aiohttp server for its login, API and recording storage hosts):
  POST /oauth/token                 HTTP Basic client_id:client_secret, grant_type=client_credentials
                                    -> {"access_token", "token_type": "bearer", "expires_in"}; 401 otherwise
  GET  /api/v2/conversations/{id}/recordings?maxWaitMs&formatId
                                    -> 200 [Recording{id, conversationId, media, fileState, mediaUris:
                                       {"S": {"mediaUri"}}, outputDurationMs, ...}], 202 while processing,
                                       401 bad token, 404 unknown conversation, 429 + Retry-After
NICE CXone:
  POST /authentication/v1/token/access-key   {"accessKeyId", "accessKeySecret"} -> {"access_token", ...}
  GET  /media-playback/v1/contacts?acd-call-id&media-type&exclude-waveforms&isDownload
                                    -> {"contactId", "interactions": [{"mediaType", "data": {"fileToPlayUrl"}}]}
Both: GET /media/{name}?X-Amz-Signature=...  the recording file (a pre-signed, credential-free URL).

`script[session_id]` is a list of what the metadata endpoint does on successive calls:
"ok", "processing" (202), "processing-retry:N" (202 + Retry-After N), "429:N", "500", "401",
"404"; after the list, "ok". `media_mode[session_id]` changes the download: "slow" (stalls),
"redirect-private" (302 to a loopback address that is not allowed), "hang" (never answers)."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Hit:
    method: str
    path: str
    at: float
    authorization: str | None
    query: dict


@dataclass
class FakeProvider:
    kind: str                                  # "genesys" | "nice"
    client_id: str = "vbgw-client"
    secret: str = field(default_factory=lambda: "s3cr3t-" + secrets.token_hex(8))
    recordings: dict[str, tuple[bytes, str]] = field(default_factory=dict)   # id -> (file, content type)
    script: dict[str, list[str]] = field(default_factory=dict)
    media_mode: dict[str, str] = field(default_factory=dict)
    nice_shape: dict[str, str] = field(default_factory=dict)                 # id -> "help-page"
    hits: list[Hit] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, path_part: str) -> list[Hit]:
        return [h for h in self.hits if path_part in h.path]

    # -- handlers ------------------------------------------------------------------------
    async def _log(self, request: web.Request) -> None:
        self.hits.append(Hit(request.method, request.path, time.monotonic(), request.headers.get("Authorization"),
                             dict(request.query)))

    def _issue(self) -> web.Response:
        tok = secrets.token_urlsafe(24)
        self.tokens.add(tok)
        body = {"access_token": tok, "token_type": "bearer", "expires_in": 86399}
        if self.kind == "nice":
            body.update({"refresh_token": secrets.token_urlsafe(16), "id_token": "x.e30.y", "token_type": "Bearer"})
        return web.json_response(body)

    async def genesys_token(self, request: web.Request) -> web.Response:
        await self._log(request)
        form = await request.post()
        want = "Basic " + base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        if request.headers.get("Authorization") != want or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client", "description": "client not found",
                                      "error_description": "client not found"}, status=401)
        return self._issue()

    async def nice_token(self, request: web.Request) -> web.Response:
        await self._log(request)
        body = await request.json()
        if body != {"accessKeyId": self.client_id, "accessKeySecret": self.secret}:
            return web.json_response({"error": "invalid_grant", "error_description": "Invalid access key"},
                                     status=401)
        return self._issue()

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, tok = (request.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and tok in self.tokens

    def _step(self, sid: str) -> str:
        steps = self.script.get(sid) or []
        return steps.pop(0) if steps else "ok"

    def _scripted(self, sid: str) -> web.Response | None:
        step = self._step(sid)
        if step == "ok":
            return None
        if step == "processing":
            return web.Response(status=202)
        kind, _, arg = step.partition(":")
        if kind == "processing-retry":
            return web.Response(status=202, headers={"Retry-After": arg})
        if kind == "429":
            return web.json_response({"message": "Rate limit exceeded the maximum", "code": "too.many.requests",
                                      "status": 429}, status=429, headers={"Retry-After": arg or "1"})
        if kind == "401":
            self.tokens.clear()               # revoked: the next token request works again
            return web.json_response({"message": "Invalid login credentials.", "code": "bad.credentials",
                                      "status": 401}, status=401)
        return web.json_response({"message": "scripted failure", "status": int(kind)}, status=int(kind))

    async def genesys_recordings(self, request: web.Request) -> web.Response:
        await self._log(request)
        if not self._authorised(request):
            return web.json_response({"message": "Invalid login credentials.", "code": "bad.credentials",
                                      "status": 401}, status=401)
        cid = request.match_info["cid"]
        if cid not in self.recordings:
            return web.json_response({"message": f"Conversation {cid} not found", "code": "not.found",
                                      "status": 404}, status=404)
        scripted = self._scripted(cid)
        if scripted is not None:
            return scripted
        data, _ = self.recordings[cid]
        return web.json_response([{
            "id": "rec-" + cid, "conversationId": cid, "name": "", "media": "audio", "fileState": "AVAILABLE",
            "startTime": "2026-01-05T10:00:00.000Z", "endTime": "2026-01-05T10:00:15.000Z",
            "mediaUris": {"S": {"mediaUri": self._media_url(cid, request.query.get("formatId", "WAV"))}},
            "outputDurationMs": 15000, "outputSizeInBytes": len(data), "recordingFileRole": "CUSTOMER_EXPERIENCE",
            "selfUri": f"/api/v2/conversations/{cid}/recordings/rec-{cid}"}])

    async def nice_contacts(self, request: web.Request) -> web.Response:
        await self._log(request)
        if not self._authorised(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        sid = request.query.get("acd-call-id", "")
        if sid not in self.recordings:
            return web.json_response({"message": "Interaction Not Found"}, status=404)
        scripted = self._scripted(sid)
        if scripted is not None:
            return scripted
        interaction = {"mediaType": request.query.get("media-type", "voice-only"),
                       "startTime": "2026-01-05T10:00:00.000Z", "endTime": "2026-01-05T10:00:15.000Z",
                       "data": {"startTime": "2026-01-05T10:00:00.000Z", "endTime": "2026-01-05T10:00:15.000Z",
                                "fileToPlayUrl": self._media_url(sid, "mp4")}}
        if self.nice_shape.get(sid) == "help-page":
            return web.json_response({"value": {"contactId": "11e766de-4ace-33d0-9ff6-0242ac110004",
                                                "Interactions": [{"Interaction": interaction}]}})
        return web.json_response({"contactId": "11e766de-4ace-33d0-9ff6-0242ac110004", "acdcontactId": sid,
                                  "interactions": [interaction]})

    def _media_url(self, sid: str, ext: str) -> str:
        return f"{self.base}/media/{sid}.{ext.lower()}?X-Amz-Expires=300&X-Amz-Signature={secrets.token_hex(16)}"

    async def media(self, request: web.Request) -> web.StreamResponse:
        await self._log(request)
        sid = request.match_info["name"].rsplit(".", 1)[0]
        mode = self.media_mode.get(sid, "")
        if mode == "redirect-private":
            raise web.HTTPFound(f"http://127.0.0.2:{self.port}/media/{sid}.bin")
        if mode == "hang":
            await self.release.wait()
        data, ctype = self.recordings[sid]
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        await resp.prepare(request)
        await resp.write(data[:1000])
        if mode == "slow":
            await asyncio.sleep(60)               # far past the gateway's download time limit
        await resp.write(data[1000:])
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        if self.kind == "genesys":
            app.router.add_post("/oauth/token", self.genesys_token)
            app.router.add_get("/api/v2/conversations/{cid}/recordings", self.genesys_recordings)
        else:
            app.router.add_post("/authentication/v1/token/access-key", self.nice_token)
            app.router.add_get("/media-playback/v1/contacts", self.nice_contacts)
        app.router.add_get("/media/{name}", self.media)
        return app

    def tenant_config(self) -> dict:
        if self.kind == "genesys":
            return {"login_url": self.base, "api_url": self.base, "client_id": self.client_id,
                    "client_secret": self.secret}
        return {"auth_url": f"{self.base}/authentication/v1/token/access-key", "api_url": self.base,
                "access_key_id": self.client_id, "access_key_secret": self.secret}


def dumps(obj) -> str:
    return json.dumps(obj)


def recordings_overrides(tmp_path, genesys: FakeProvider, nice: FakeProvider, **recordings) -> dict:
    """Settings overrides of a gateway whose acme tenant fetches from these fakes, with short
    retry timings (here, not in conftest.py: several conftest modules exist, so tests import
    from uniquely named modules)."""
    rec = {"tenants": {"acme": {"genesys": genesys.tenant_config(), "nice": nice.tenant_config()}},
           "retry_base_s": 0.05, "retry_max_s": 0.2, "processing_poll_s": 0.1, "max_attempts": 3,
           "download_timeout_s": 3.0, "api_timeout_s": 10.0, "job_deadline_s": 120.0}
    rec.update(recordings)
    return {
        "server": {"data_dir": str(tmp_path / "var"), "port": 0, "shutdown_grace_s": 1},
        "events": {"jsonl_path": str(tmp_path / "var" / "events.jsonl")},
        "dialogs": {"retain_after_close_s": 600},
        "fetch": {"allowed_networks": ["127.0.0.1/32"]},
        "uploads": {"max_audio_s": 60},
        "recordings": rec,
    }
