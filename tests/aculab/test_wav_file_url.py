"""Issue #16 item 3: `wav_file_url` is fetched (it answered 501, and GET ignored it), safely:
only hosts on fetch.allowed_hosts, never a loopback/private address (after DNS and on every
redirect), with size, time and redirect limits; `source` is the URL as supplied. A local
aiohttp server serves the audio; host names are mapped by an injected resolver, and the test
server's 127.0.0.1 is made "public" by fetch.allowed_networks, so every other loopback
address stays forbidden (as in tests/gateway/test_fetch.py)."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from aculab_support import Client, assert_error, sources, user_group_key, wav_file
from gateway.infra.fetch import FetchConfig
from support import Gateway, MapResolver, add_hostile_downloads, admin, pat_of

SERVER_IP = "127.0.0.1"
NAMES = {"wav.example.test": SERVER_IP, "notlisted.example.test": SERVER_IP,
         "loopback.example.test": "127.0.0.2"}


@pytest.fixture
async def audio_server(aiohttp_server):
    hits: list[str] = []

    async def wav(request):
        hits.append(request.path)
        return web.Response(body=wav_file(request.match_info["name"]), content_type="audio/wav")

    async def redirect(request):
        hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/audio/{name}.wav", wav)
    app.router.add_get("/redirect", redirect)
    add_hostile_downloads(app, hits, "/big.wav", "/slow.wav")    # 64 MB chunked; a stall past the timeout
    srv = await aiohttp_server(app, host=SERVER_IP)
    srv.hits = hits
    return srv


@pytest.fixture
async def url_gateway(settings, engine, aiohttp_server, audio_server):
    from gateway.app import create_app
    from gateway.web import aculab
    fetch = FetchConfig(allowed_hosts=["wav.example.test", "loopback.example.test"],
                        allowed_networks=[f"{SERVER_IP}/32"], allowed_ports=[audio_server.port],
                        max_bytes=2_000_000, total_timeout_s=2.0, connect_timeout_s=2.0, max_redirects=2)
    settings = settings.model_copy(update={"fetch": fetch})
    pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    app = create_app(settings, engine=engine)
    app[aculab.FETCH_RESOLVER] = MapResolver(NAMES)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        yield Gateway(f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}", http, settings, pat,
                      server.app)


def url(server, path: str, host: str = "wav.example.test") -> str:
    return f"http://{host}:{server.port}{path}"


async def test_register_update_verify_from_allowed_urls(url_gateway, audio_server):
    gw, srv = url_gateway, audio_server
    cl = Client(gw, await user_group_key(gw))
    enrol = [url(srv, "/audio/1688_enrol0.wav"), url(srv, "/audio/1688_enrol1.wav")]
    status, reg = await cl.call("POST", "register", params=[("user_id", "bob")] + [("wav_file_url", u) for u in enrol])
    assert status == 200, reg
    assert reg["sources"] == [{"source": u, "accepted": True} for u in enrol]
    # The document's own form: no scheme (fetched over https; here the port speaks http, so
    # the attempt fails to connect — and is reported as a download error, with its source host)
    status, body = await cl.call("POST", "update", params={"user_id": "bob",
                                                           "wav_file_url": f"wav.example.test:{srv.port}/audio/x.wav"})
    assert_error(status, body, 400, "CONNECT_FAILED", "update")
    assert body["error"]["text"].startswith("Bad Request: Exception downloading audio: ")
    status, upd = await cl.call("POST", "update", params={"user_id": "bob",
                                                          "wav_file_url": url(srv, "/audio/1688_test2.wav")})
    assert status == 200 and upd["sources"] == [{"source": url(srv, "/audio/1688_test2.wav"), "accepted": True}], upd
    # verify: POST and PUT (the document's verify example puts the URL in the query string)
    test1 = url(srv, "/audio/1688_test1.wav")
    status, ver = await cl.call("POST", "verify", params={"user_id": "bob", "text_dependent": "false",
                                                          "wav_file_url": test1})
    assert status == 200 and ver["verified"] is True and ver["sources"] == [{"source": test1, "accepted": True}], ver
    status, ver = await cl.call("PUT", "verify", params={"user_id": "bob", "text_dependent": "false",
                                                         "wav_file_url": url(srv, "/audio/1998_test0.wav")})
    assert status == 200 and ver["verified"] is False and "sources" not in ver, ver
    assert "/audio/1688_test1.wav" in srv.hits


async def test_refusals(url_gateway, audio_server):
    gw, srv = url_gateway, audio_server
    cl = Client(gw, await user_group_key(gw))
    status, reg = await cl.put("register", "bob", wav_file("1688_enrol0"))
    assert status == 200, reg
    verify = {"user_id": "bob", "text_dependent": "false"}

    async def refused(code: str, u: str, action: str = "verify", method: str = "POST", **params) -> dict:
        status, body = await cl.call(method, action, params={**verify, **params, "wav_file_url": u})
        assert_error(status, body, 400, code, action)
        return body

    before = len(srv.hits)
    # a host not on the allow-list is never contacted
    await refused("NOT_ALLOWED_HOST", url(srv, "/audio/1688_test1.wav", "notlisted.example.test"))
    # loopback literals (not listed) and a listed name that resolves to loopback
    await refused("NOT_ALLOWED_HOST", f"http://127.0.0.2:{srv.port}/audio/1688_test1.wav")
    await refused("NOT_ALLOWED_HOST", f"http://[::1]:{srv.port}/audio/1688_test1.wav")
    await refused("PRIVATE_ADDRESS", url(srv, "/audio/1688_test1.wav", "loopback.example.test"))
    await refused("UNSUPPORTED_SCHEME", "file:///etc/passwd")
    assert len(srv.hits) == before
    # an allowed host redirecting to loopback, or to a name that resolves to it
    for to, code in ((f"http://127.0.0.2:{srv.port}/audio/1688_test1.wav", "NOT_ALLOWED_HOST"),
                     (url(srv, "/audio/1688_test1.wav", "loopback.example.test"), "PRIVATE_ADDRESS"),
                     (url(srv, "/audio/1688_test1.wav", "notlisted.example.test"), "NOT_ALLOWED_HOST")):
        await refused(code, url(srv, "/redirect") + "?to=" + to)
    assert "/audio/1688_test1.wav" not in srv.hits          # every redirect stopped before the audio
    # oversized (streamed, no Content-Length) and slow downloads
    await refused("TOO_LARGE", url(srv, "/big.wav"))
    for _ in range(50):                                     # the server sees the client hang up
        if "aborted" in srv.hits:
            break
        await asyncio.sleep(0.05)
    assert "aborted" in srv.hits
    await refused("TIMEOUT", url(srv, "/slow.wav"))
    # where the document does not take a URL
    await refused("WAV_FILE_URL_NOT_FOR_PUT", url(srv, "/audio/1688_enrol1.wav"), action="update", method="PUT")
    status, body = await cl.call("GET", "verify", params={**verify, "wav_file_url": url(srv, "/audio/1688_test1.wav")})
    assert_error(status, body, 400, "WAV_FILE_URL_NOT_FOR_GET", "verify")       # not silently ignored
    status, body = await cl.call("POST", "update", params={"user_id": "bob", "wav_file_url": url(srv, "/a.wav")},
                                 data=sources(("Source1", wav_file("1688_enrol1"))))
    assert_error(status, body, 400, "AUDIO_TWICE", "update")
    two = [("wav_file_url", url(srv, "/audio/1688_test1.wav")), ("wav_file_url", url(srv, "/audio/1688_test2.wav"))]
    status, body = await cl.call("POST", "verify", params=[("user_id", "bob")] + two)
    assert_error(status, body, 400, "TOO_MANY_SOURCES", "verify")              # text dependent: one source
    # nothing was registered or counted by the refused requests
    status, st = await cl.call("GET", "stats", params={"user_id": "bob"})
    assert st["verification_attempts"] == 0, st


async def test_fetching_is_off_by_default(gateway):
    cl = Client(gateway, await user_group_key(gateway))
    status, body = await cl.call("POST", "register", params={"user_id": "bob",
                                                             "wav_file_url": "https://example.com/a.wav"})
    assert_error(status, body, 400, "FETCH_DISABLED", "register")
    assert "allowed_hosts" in body["error"]["text"]
