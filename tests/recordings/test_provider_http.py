"""What the recording providers' clients add to gateway.infra.fetch, against local servers: requests
other than GET are never redirected, credentials never follow a redirect to another origin,
Retry-After is read, per-call limits hold; and the providers' answers are read tolerantly
(both NICE shapes; Genesys recording states). Configuration keeps secrets out of sight."""
from __future__ import annotations

import asyncio
import email.utils
import time

import pytest
from aiohttp import web

from gateway.infra.fetch import FetchConfig, FetchError, UrlFetcher, retry_after_s
from gateway.services.recordings.providers import GenesysClient, NiceClient, ProviderError

IP = "127.0.0.1"


@pytest.fixture
async def two_origins(aiohttp_server):
    seen: list[tuple[int, str, str | None]] = []

    def app(port_of_other):
        async def echo(request):
            seen.append((request.url.port, request.path, request.headers.get("Authorization")))
            if request.path == "/to-other":
                raise web.HTTPFound(f"http://{IP}:{port_of_other()}/landing")
            if request.path == "/to-self":
                raise web.HTTPFound("/landing")
            if request.path == "/busy":
                return web.json_response({"message": "slow down"}, status=429, headers={"Retry-After": "7"})
            if request.path == "/stall":
                await asyncio.sleep(30)
            return web.json_response({"ok": True}, headers={"Retry-After": "2"} if request.path == "/landing" else {})
        a = web.Application()
        a.router.add_route("*", "/{tail:.*}", echo)
        return a
    ports = {}
    first = await aiohttp_server(app(lambda: ports["b"]), host=IP)
    second = await aiohttp_server(app(lambda: ports["a"]), host=IP)
    ports["a"], ports["b"] = first.port, second.port
    fetcher = UrlFetcher(FetchConfig(allowed_hosts=[IP], allowed_networks=[f"{IP}/32"],
                                     allowed_ports=[first.port, second.port], total_timeout_s=5))
    yield fetcher, f"http://{IP}:{first.port}", seen
    await fetcher.close()


async def test_credentials_stay_with_their_origin(two_origins):
    fetcher, base, seen = two_origins
    auth = {"Authorization": "Bearer secret-token"}
    got = await fetcher.request("GET", f"{base}/to-self", headers=auth)
    assert got.status == 200 and got.retry_after == 2.0
    got = await fetcher.request("GET", f"{base}/to-other", headers=auth)
    assert got.status == 200
    assert [a for _, _, a in seen] == ["Bearer secret-token", "Bearer secret-token", "Bearer secret-token", None]


async def test_a_post_is_never_redirected(two_origins):
    fetcher, base, seen = two_origins
    with pytest.raises(FetchError) as ei:
        await fetcher.request("POST", f"{base}/to-other", data="grant_type=client_credentials")
    assert ei.value.code == "BAD_REDIRECT" and len(seen) == 1


async def test_refusals_carry_retry_after_and_calls_have_their_own_limits(two_origins):
    fetcher, base, _ = two_origins
    with pytest.raises(FetchError) as ei:
        await fetcher.request("GET", f"{base}/busy")
    assert (ei.value.code, ei.value.status, ei.value.retry_after) == ("HTTP_STATUS", 429, 7.0)
    t = time.monotonic()
    with pytest.raises(FetchError) as ei:
        await fetcher.request("GET", f"{base}/stall", timeout_s=0.5)
    assert ei.value.code == "TIMEOUT" and time.monotonic() - t < 4
    with pytest.raises(FetchError) as ei:
        await fetcher.request("GET", f"{base}/landing", max_bytes=5)
    assert ei.value.code == "TOO_LARGE"


def test_retry_after_forms():
    assert retry_after_s("120") == 120.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    now = time.time()
    assert retry_after_s(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_s(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_nice_answers_are_read_in_both_published_shapes():
    practitioners = {"contactId": "x", "interactions": [
        {"mediaType": "chat", "data": {"fileToPlayUrl": "https://s/chat.json"}},
        {"mediaType": "voice-only", "data": {"fileToPlayUrl": "https://s/voice.mp4"}}]}
    help_page = {"value": {"contactId": "x", "Interactions": [
        {"Interaction": {"mediaType": "voice-and-screen", "data": {"fileToPlayUrl": "https://s/vs.mp4"}}}]}}
    assert NiceClient._file_url(practitioners) == "https://s/voice.mp4"
    assert NiceClient._file_url(help_page) == "https://s/vs.mp4"
    for body, code in (({"interactions": []}, "RECORDING_NOT_FOUND"),
                       ({"interactions": [{"mediaType": "voice-only", "data": {}}]}, "RECORDING_NOT_READY"),
                       ({"unexpected": 1}, "PROVIDER_BAD_RESPONSE")):
        with pytest.raises(ProviderError) as ei:
            NiceClient._file_url(body)
        assert ei.value.code == code


def test_genesys_recording_states():
    def rec(state, uri="https://s3/r.wav", dur=1000):
        return {"media": "audio", "fileState": state, "outputDurationMs": dur,
                "mediaUris": {"S": {"mediaUri": uri}} if uri else None}
    assert GenesysClient._media_uri([rec("AVAILABLE", "https://s3/a", 10), rec("AVAILABLE", "https://s3/b", 99)]) \
        == "https://s3/b"                                                   # the longest recording
    for body, code, ready_later in (([], "RECORDING_NOT_FOUND", False),
                                    ([{"media": "chat"}], "RECORDING_NOT_FOUND", False),
                                    ([rec("UPLOADING", None)], "RECORDING_NOT_READY", True),
                                    ([rec("ARCHIVED", None)], "RECORDING_UNAVAILABLE", False),
                                    ({"entities": []}, "PROVIDER_BAD_RESPONSE", False)):
        with pytest.raises(ProviderError) as ei:
            GenesysClient._media_uri(body)
        assert (ei.value.code, ei.value.not_ready) == (code, ready_later)


def test_provider_configuration_keeps_secrets_hidden_and_https():
    from gateway.infra.config import ConfigError, load_settings
    env = {"VBGW_RECORDINGS__TENANTS": '{"acme": {"nice": {"access_key_id": "AK", "access_key_secret": "hush-123",'
                                       ' "api_url": "https://api-eu1.niceincontact.com"}}}'}
    s = load_settings(environ=env)
    nice = s.recordings.tenants["acme"].nice
    assert "hush-123" not in repr(s) and "hush-123" not in s.model_dump_json()
    assert nice.access_key_secret.get_secret_value() == "hush-123"
    assert s.recordings.credentials("t-id", "acme", "NICE_IN_CONTACT") is nice
    assert s.recordings.credentials("t-id", "acme", "GENESYS") is None
    bad = dict(env)
    bad["VBGW_RECORDINGS__TENANTS"] = env["VBGW_RECORDINGS__TENANTS"].replace("https://api-eu1", "http://api-eu1")
    with pytest.raises(ConfigError) as ei:
        load_settings(environ=bad)
    assert "https only" in str(ei.value) and "hush-123" not in str(ei.value)
