"""gateway.infra.fetch: the SSRF-safe URL fetcher, against local aiohttp servers on loopback.

Host names are mapped to addresses by a resolver injected into the fetcher (the machine's
/etc/hosts is not ours to change); "public" addresses are simulated by listing the test
server's loopback address in allowed_networks, so every other loopback or private address
stays forbidden, as it would be in production."""
from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from gateway.infra.config import load_settings
from gateway.infra.fetch import AddressPolicy, FetchConfig, FetchError, UrlFetcher
from support import MapResolver, add_hostile_downloads

SERVER_IP = "127.0.0.1"          # where the test server listens; "public" in these tests


class FlipResolver(MapResolver):
    """A DNS rebinding attacker: the first answer is the allowed address, later ones loopback."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        res = await super().resolve(host, port, family)
        if len(self.calls) > 1:
            for r in res:
                r["host"] = "127.0.0.2"
        return res


@pytest.fixture
async def server(aiohttp_server):
    hits: list[str] = []

    async def audio(request):
        hits.append(request.path)
        return web.Response(body=b"RIFF" + b"\0" * 1000, content_type="audio/wav")

    async def redirect(request):
        hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    async def loop_a(request):
        hits.append(request.path)
        raise web.HTTPFound("/loop-b")

    async def loop_b(request):
        hits.append(request.path)
        raise web.HTTPFound("/loop-a")

    async def chain(request):
        hits.append(request.path)
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/chain/{n + 1}" if n < 10 else "/audio.wav")

    async def big_declared(request):
        hits.append(request.path)
        return web.Response(body=b"\0" * 200_000)

    async def missing(request):
        hits.append(request.path)
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/audio.wav", audio)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop-a", loop_a)
    app.router.add_get("/loop-b", loop_b)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/big-declared", big_declared)
    add_hostile_downloads(app, hits, "/big-streamed", "/slow")     # 64 MB chunked; a stall past the timeout
    app.router.add_get("/missing", missing)
    srv = await aiohttp_server(app, host=SERVER_IP)
    srv.hits = hits
    return srv


def make(server, names=None, resolver=None, **kw) -> UrlFetcher:
    cfg = dict(allowed_hosts=["audio.example.test", "other.example.test"],
               allowed_networks=[f"{SERVER_IP}/32"], allowed_ports=[server.port],
               max_bytes=100_000, total_timeout_s=5.0, connect_timeout_s=5.0, max_redirects=3)
    cfg.update(kw)
    resolver = resolver or MapResolver(names or {"audio.example.test": SERVER_IP,
                                                 "other.example.test": SERVER_IP,
                                                 "notlisted.example.test": SERVER_IP,
                                                 "loopback.example.test": "127.0.0.2",
                                                 "mixed.example.test": [SERVER_IP, "10.0.0.7"]})
    return UrlFetcher(FetchConfig(**cfg), resolver=resolver)


async def expect(fetcher: UrlFetcher, url: str, code: str) -> FetchError:
    async with fetcher:
        with pytest.raises(FetchError) as ei:
            await fetcher.fetch(url)
    assert ei.value.code == code, ei.value.message
    return ei.value


async def test_allowed_host_is_fetched(server):
    f = make(server)
    async with f:
        got = await f.fetch(f"http://audio.example.test:{server.port}/audio.wav?sig=secret")
    assert got.status == 200 and got.body.startswith(b"RIFF") and len(got.body) == 1004
    assert got.content_type == "audio/wav" and got.redirects == []
    assert f.resolver.lookups == 1            # one lookup per connection: the checked one


async def test_host_not_on_the_allow_list_is_never_contacted(server):
    await expect(make(server), f"http://notlisted.example.test:{server.port}/audio.wav", "NOT_ALLOWED_HOST")
    assert server.hits == []


async def test_allowed_name_resolving_to_loopback_is_refused_before_connecting(server):
    f = make(server, allowed_hosts=["loopback.example.test"])
    err = await expect(f, f"http://loopback.example.test:{server.port}/audio.wav", "PRIVATE_ADDRESS")
    assert "127.0.0.2" in err.message
    assert server.hits == []


async def test_a_name_with_one_private_address_among_public_ones_is_refused(server):
    f = make(server, allowed_hosts=["mixed.example.test"])
    await expect(f, f"http://mixed.example.test:{server.port}/audio.wav", "PRIVATE_ADDRESS")
    assert server.hits == []


async def test_loopback_and_metadata_ip_literals_are_refused_even_when_listed(server):
    f = make(server, allowed_hosts=["127.0.0.2", "169.254.169.254", "::1"], allowed_ports=[server.port, 80])
    await expect(f, f"http://127.0.0.2:{server.port}/audio.wav", "PRIVATE_ADDRESS")
    await expect(make(server, allowed_hosts=["169.254.169.254"], allowed_ports=[80]),
                 "http://169.254.169.254/latest/meta-data/", "PRIVATE_ADDRESS")
    await expect(make(server, allowed_hosts=["::1"]), f"http://[::1]:{server.port}/audio.wav", "PRIVATE_ADDRESS")
    assert server.hits == []


async def test_loopback_is_reachable_only_when_its_network_is_configured(server):
    f = make(server, allowed_hosts=[SERVER_IP])
    async with f:
        got = await f.fetch(f"http://{SERVER_IP}:{server.port}/audio.wav")
    assert got.body.startswith(b"RIFF")
    await expect(make(server, allowed_hosts=[SERVER_IP], allowed_networks=[]),
                 f"http://{SERVER_IP}:{server.port}/audio.wav", "PRIVATE_ADDRESS")


async def test_redirect_from_an_allowed_host_to_loopback_is_refused(server):
    # 127.0.0.1 literal: not on the host allow-list
    to = f"http://127.0.0.1:{server.port}/audio.wav"
    await expect(make(server), f"http://audio.example.test:{server.port}/redirect?to={to}", "NOT_ALLOWED_HOST")
    # an allowed name whose address is loopback: refused at resolution, not fetched
    to = f"http://loopback.example.test:{server.port}/audio.wav"
    f = make(server, allowed_hosts=["audio.example.test", "loopback.example.test"])
    await expect(f, f"http://audio.example.test:{server.port}/redirect?to={to}", "PRIVATE_ADDRESS")
    # even when the loopback literal is on the allow-list, the address check holds
    to = f"http://127.0.0.2:{server.port}/audio.wav"
    f = make(server, allowed_hosts=["audio.example.test", "127.0.0.2"])
    await expect(f, f"http://audio.example.test:{server.port}/redirect?to={to}", "PRIVATE_ADDRESS")
    assert server.hits == ["/redirect"] * 3


async def test_redirect_to_a_disallowed_host_or_scheme_or_port_is_refused(server):
    to = f"http://notlisted.example.test:{server.port}/audio.wav"
    await expect(make(server), f"http://audio.example.test:{server.port}/redirect?to={to}", "NOT_ALLOWED_HOST")
    await expect(make(server), f"http://audio.example.test:{server.port}/redirect?to=file:///etc/passwd",
                 "UNSUPPORTED_SCHEME")
    await expect(make(server), f"http://audio.example.test:{server.port}/redirect?to=http://audio.example.test:22/",
                 "NOT_ALLOWED_PORT")
    assert server.hits == ["/redirect"] * 3


async def test_redirect_to_another_allowed_host_is_followed(server):
    f = make(server)
    to = f"http://other.example.test:{server.port}/audio.wav"
    async with f:
        got = await f.fetch(f"http://audio.example.test:{server.port}/redirect?to={to}")
    assert got.body.startswith(b"RIFF") and got.redirects == ["audio.example.test"]
    assert f.resolver.inner.calls == ["audio.example.test", "other.example.test"]


async def test_redirect_loop_and_long_chains_stop(server):
    await expect(make(server), f"http://audio.example.test:{server.port}/loop-a", "TOO_MANY_REDIRECTS")
    assert server.hits == ["/loop-a", "/loop-b"]
    server.hits.clear()
    await expect(make(server), f"http://audio.example.test:{server.port}/chain/0", "TOO_MANY_REDIRECTS")
    assert server.hits == ["/chain/0", "/chain/1", "/chain/2", "/chain/3"]      # max_redirects = 3


async def test_dns_rebinding_after_the_first_lookup_is_caught_on_the_next_connection(server):
    f = make(server, resolver=FlipResolver({"audio.example.test": SERVER_IP}))
    async with f:
        assert (await f.fetch(f"http://audio.example.test:{server.port}/audio.wav")).body
        with pytest.raises(FetchError) as ei:      # same host, the name now points at loopback
            await f.fetch(f"http://audio.example.test:{server.port}/audio.wav")
    assert ei.value.code == "PRIVATE_ADDRESS"
    assert server.hits == ["/audio.wav"]


async def test_oversized_bodies_are_refused_declared_or_streamed(server):
    await expect(make(server), f"http://audio.example.test:{server.port}/big-declared", "TOO_LARGE")
    err = await expect(make(server), f"http://audio.example.test:{server.port}/big-streamed", "TOO_LARGE")
    assert "100000" in err.message
    for _ in range(100):                      # the server sees the client hang up mid-stream
        if "aborted" in server.hits:
            break
        await asyncio.sleep(0.05)
    assert "aborted" in server.hits


async def test_a_slow_body_hits_the_total_timeout(server):
    err = await expect(make(server, total_timeout_s=0.5), f"http://audio.example.test:{server.port}/slow", "TIMEOUT")
    assert "0.5 s" in err.message


async def test_error_statuses_and_unresolvable_names(server):
    err = await expect(make(server), f"http://audio.example.test:{server.port}/missing", "HTTP_STATUS")
    assert err.status == 404
    f = make(server, allowed_hosts=["nowhere.example.test"])
    await expect(f, f"http://nowhere.example.test:{server.port}/audio.wav", "DNS_FAILURE")


async def test_url_shape_checks(server):
    p = server.port
    await expect(make(server), f"ftp://audio.example.test:{p}/a.wav", "UNSUPPORTED_SCHEME")
    await expect(make(server), "/relative/a.wav", "BAD_URL")
    await expect(make(server), f"http://user:pw@audio.example.test:{p}/a.wav", "BAD_URL")
    await expect(make(server), "http://audio.example.test/a.wav", "NOT_ALLOWED_PORT")   # port 80 not listed
    await expect(make(server, allowed_hosts=[]), f"http://audio.example.test:{p}/a.wav", "FETCH_DISABLED")
    assert server.hits == []


def test_address_policy_classification():
    p = AddressPolicy(FetchConfig(allowed_hosts=["x.example"], allowed_networks=["10.20.0.0/16"]))
    refused = ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200",
               "192.0.0.192", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00:ec2::254", "ff02::1",
               "::ffff:127.0.0.1", "2002:7f00:1::1", "64:ff9b::a9fe:a9fe", "not-an-ip"]
    assert [a for a in refused if p.address_allowed(a)] == []
    assert p.address_allowed("10.20.3.4")           # an operator-listed private network
    assert p.address_allowed("8.8.8.8") and p.address_allowed("2606:4700::1111")   # classification only


def test_wildcards_match_subdomains_only():
    p = AddressPolicy(FetchConfig(allowed_hosts=["*.rec.example", "Files.Example.COM."]))
    assert p.host_allowed("a.rec.example") and p.host_allowed("b.a.rec.example")
    assert not p.host_allowed("rec.example") and not p.host_allowed("evilrec.example")
    assert p.host_allowed("files.example.com") and not p.host_allowed("files.example.com.evil.test")


def test_fetch_section_is_in_the_default_config():
    s = load_settings(environ={})
    assert s.fetch.allowed_hosts == [] and s.fetch.max_redirects >= 0
    with pytest.raises(Exception):
        FetchConfig(allowed_hosts=["http://x.example/"])
    with pytest.raises(Exception):
        FetchConfig(allowed_networks=["10.0.0.0/33"])
