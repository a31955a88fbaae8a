"""Fetching a call's recording from its CCaaS provider (docs/recordings.md has the sources and
says what is documented and what is inferred).

* Genesys Cloud: OAuth client credentials (`POST {login}/oauth/token`, HTTP Basic client id
  and secret, `grant_type=client_credentials`), then `GET {api}/api/v2/conversations/{id}/
  recordings?maxWaitMs=..&formatId=WAV`: 200 with a list of Recording objects whose
  `mediaUris` hold pre-signed download URLs, or 202 while the recording is still being
  processed (transcoded); then the download.
* NICE CXone: access key -> token (`POST {auth}` with `accessKeyId`/`accessKeySecret`), then
  the Media Playback API `GET {api}/media-playback/v1/contacts?acd-call-id={id}&media-type=
  voice-only&exclude-waveforms=true&isDownload=true`: the contact's interactions, each with
  `data.fileToPlayUrl`, a temporary URL of the MP4 file; then the download.

Every request goes through gateway.infra.fetch.UrlFetcher (allow-list, public addresses only after
DNS and on every redirect, size and time limits); the allow-list of a provider's fetcher is
the configured `fetch.allowed_hosts` plus the provider's own API hosts and `media_hosts`.
Tokens are cached in memory until shortly before they expire; a 401 with a cached token
gets one fresh token. Failures are ProviderError with a stable code and whether a later
attempt may succeed (`retryable`, `retry_after`), or `not_ready` for a recording that is
still being processed. Credentials, tokens and download URLs are never logged."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import structlog
from yarl import URL

from gateway.infra.fetch import FetchConfig, FetchError, UrlFetcher
from gateway.services.recordings.config import GENESYS, NICE, GenesysCredentials, NiceCredentials, RecordingsConfig

log = structlog.get_logger(__name__)

PROVIDER_CODES = {
    "PROVIDER_AUTH_FAILED": "the provider refused vbgw's credentials (401/403): check recordings.tenants.*",
    "RECORDING_NOT_FOUND": "the provider has no such call, or no recording of it",
    "RECORDING_NOT_READY": "the recording was still being processed when the job's time ran out",
    "RECORDING_UNAVAILABLE": "the recording exists but cannot be downloaded (archived, deleted, no audio)",
    "PROVIDER_RATE_LIMITED": "the provider kept answering 429 Too Many Requests",
    "PROVIDER_UNAVAILABLE": "the provider could not be reached or kept failing (5xx, timeouts)",
    "PROVIDER_REJECTED": "the provider refused the request (another 4xx)",
    "PROVIDER_BAD_RESPONSE": "the provider's answer could not be understood",
    "RECORDING_TOO_LARGE": "the recording is larger than recordings.max_download_bytes",
    "RECORDING_DOWNLOAD_FAILED": "the recording download failed or was too slow",
    "RECORDING_DOWNLOAD_REFUSED": "the download URL (or a redirect) is not allowed: host, port or a "
                                  "private/loopback/link-local address",
}
TOKEN_MARGIN_S = 60.0                 # renew a token this long before it expires
_REFUSED = {"FETCH_DISABLED", "BAD_URL", "UNSUPPORTED_SCHEME", "NOT_ALLOWED_HOST", "NOT_ALLOWED_PORT",
            "PRIVATE_ADDRESS", "BAD_REDIRECT", "TOO_MANY_REDIRECTS"}


class ProviderError(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 not_ready: bool = False):
        assert code in PROVIDER_CODES, code
        super().__init__(message)
        self.code, self.message = code, message
        self.retryable, self.retry_after, self.not_ready = retryable or not_ready, retry_after, not_ready


def _from_fetch(exc: FetchError, what: str, *, download: bool = False) -> ProviderError:
    """A fetch failure as the job sees it: whether to try again, and the stable code."""
    where = f"{what}: {exc.message} ({exc.code})"
    if exc.code == "HTTP_STATUS":
        s = exc.status or 0
        if s == 429:
            return ProviderError("PROVIDER_RATE_LIMITED", where, retryable=True, retry_after=exc.retry_after)
        if s >= 500 or s == 408:
            return ProviderError("PROVIDER_UNAVAILABLE", where, retryable=True, retry_after=exc.retry_after)
        if download:      # a temporary URL that expired: the next attempt asks for a fresh one
            return ProviderError("RECORDING_DOWNLOAD_FAILED", where, retryable=s in (403, 404, 410))
        if s in (401, 403):
            return ProviderError("PROVIDER_AUTH_FAILED", where)
        if s in (404, 410):
            return ProviderError("RECORDING_NOT_FOUND", where)
        return ProviderError("PROVIDER_REJECTED", where)
    if exc.code == "TOO_LARGE":
        return ProviderError("RECORDING_TOO_LARGE", where)
    if exc.code in _REFUSED:
        return ProviderError("RECORDING_DOWNLOAD_REFUSED" if download else "PROVIDER_REJECTED", where)
    # TIMEOUT, CONNECT_FAILED, DNS_FAILURE: the network or the provider; try again later
    return ProviderError("RECORDING_DOWNLOAD_FAILED" if download else "PROVIDER_UNAVAILABLE", where, retryable=True)


def _fetch_config(base: FetchConfig, rc: RecordingsConfig, urls: list[str], media_hosts: list[str]) -> FetchConfig:
    hosts = list(base.allowed_hosts) + [h for h in media_hosts]
    ports = list(base.allowed_ports)
    for raw in urls:
        u = URL(raw)           # validated absolute http(s) URLs (config.py): a host and a port
        if u.host is not None and u.port is not None:
            hosts.append(u.host)
            ports.append(u.port)
    return FetchConfig.model_validate({
        **base.model_dump(), "allowed_hosts": sorted(set(hosts)), "allowed_ports": sorted(set(ports)),
        "max_bytes": rc.max_download_bytes, "total_timeout_s": rc.download_timeout_s})


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        raise ProviderError("PROVIDER_BAD_RESPONSE", f"{what}: the answer is not JSON") from None


class RecordingClient:
    """One tenant's account at one provider: token cache and fetcher."""
    provider = ""

    def __init__(self, rc: RecordingsConfig, fetch_cfg: FetchConfig, urls: list[str], media_hosts: list[str],
                 resolver=None):
        self.rc = rc
        self.fetcher = UrlFetcher(_fetch_config(fetch_cfg, rc, urls, media_hosts), resolver=resolver)
        self._token: str | None = None
        self._token_until = 0.0

    async def close(self) -> None:
        await self.fetcher.close()

    async def _api(self, method: str, url: str, what: str, **kw):
        try:
            return await self.fetcher.request(method, url, max_bytes=self.rc.api_max_bytes,
                                              timeout_s=self.rc.api_timeout_s, **kw)
        except FetchError as exc:
            raise _from_fetch(exc, what) from None

    async def token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_until:
            tok, ttl = await self._new_token()
            self._token, self._token_until = tok, time.monotonic() + max(0.0, ttl - TOKEN_MARGIN_S)
        return self._token

    async def _new_token(self) -> tuple[str, float]:
        raise NotImplementedError

    @staticmethod
    def _token_of(body: bytes, what: str) -> tuple[str, float]:
        data = _json(body, what)
        tok = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(tok, str) or not tok:
            raise ProviderError("PROVIDER_BAD_RESPONSE", f"{what}: no access_token in the answer")
        ttl = data.get("expires_in")
        return tok, float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else 300.0

    async def authorised(self, method: str, url: str, what: str, **kw):
        """An API call with the bearer token; a 401 with a cached token gets one fresh token."""
        for fresh in (False, True):
            headers = {"Authorization": f"Bearer {await self.token()}", "Accept": "application/json"}
            try:
                return await self._api(method, url, what, headers=headers, **kw)
            except ProviderError as exc:
                if exc.code != "PROVIDER_AUTH_FAILED" or fresh:
                    raise
                self._token = None          # revoked or expired early: ask once more
        raise AssertionError("unreachable")

    async def listing(self, url: URL, what: str) -> Any:
        """The JSON describing a call's recordings; 202 means it is still being processed."""
        got = await self.authorised("GET", str(url), what)
        if got.status == 202:
            raise ProviderError("RECORDING_NOT_READY", f"{what}: the recording is still being processed (202)",
                                not_ready=True, retry_after=got.retry_after)
        return _json(got.body, what)

    async def download(self, url: str) -> bytes:
        """The recording file from a provider's (pre-signed, temporary) URL; no credentials sent."""
        try:
            got = await self.fetcher.request("GET", url)
        except FetchError as exc:
            raise _from_fetch(exc, f"{self.provider} recording download", download=True) from None
        if not got.body:
            raise ProviderError("RECORDING_UNAVAILABLE", f"{self.provider}: the recording file is empty")
        return got.body

    async def fetch_recording(self, session_id: str) -> bytes:
        raise NotImplementedError


class GenesysClient(RecordingClient):
    provider = GENESYS

    def __init__(self, creds: GenesysCredentials, rc: RecordingsConfig, fetch_cfg: FetchConfig, resolver=None):
        super().__init__(rc, fetch_cfg, [creds.login_url, creds.api_url], creds.media_hosts, resolver)
        self.creds = creds

    async def _new_token(self) -> tuple[str, float]:
        pair = f"{self.creds.client_id}:{self.creds.client_secret.get_secret_value()}".encode()
        got = await self._api("POST", f"{self.creds.login_url}/oauth/token", "Genesys Cloud OAuth token",
                              headers={"Authorization": "Basic " + base64.b64encode(pair).decode(),
                                       "Content-Type": "application/x-www-form-urlencoded",
                                       "Accept": "application/json"},
                              data="grant_type=client_credentials")
        return self._token_of(got.body, "Genesys Cloud OAuth token")

    async def fetch_recording(self, session_id: str) -> bytes:
        url = (URL(self.creds.api_url) / "api" / "v2" / "conversations" / session_id / "recordings").with_query(
            {"maxWaitMs": str(self.creds.max_wait_ms), "formatId": self.creds.format_id})
        listing = await self.listing(url, "Genesys Cloud conversation recordings")
        return await self.download(self._media_uri(listing))

    @staticmethod
    def _media_uri(recordings: Any) -> str:
        if not isinstance(recordings, list):
            raise ProviderError("PROVIDER_BAD_RESPONSE", "Genesys Cloud recordings: expected a list of recordings")
        audio = [r for r in recordings if isinstance(r, dict) and r.get("media", "audio") == "audio"]
        if not audio:
            raise ProviderError("RECORDING_NOT_FOUND", "Genesys Cloud has no audio recording of this conversation")
        states = {str(r.get("fileState") or "AVAILABLE").upper() for r in audio}
        ready = [r for r in audio if str(r.get("fileState") or "AVAILABLE").upper() == "AVAILABLE"]
        uris = [(r.get("outputDurationMs") or 0, uri) for r in ready for uri in _media_uris(r)]
        if uris:
            return max(uris, key=lambda x: x[0])[1]          # the longest: the most customer speech
        if states & {"UPLOADING", "PROCESSING", "TRANSCODING", "PENDING"}:
            raise ProviderError("RECORDING_NOT_READY", f"Genesys Cloud recording state {sorted(states)}",
                                not_ready=True)
        raise ProviderError("RECORDING_UNAVAILABLE", f"Genesys Cloud recording state {sorted(states)}, no media URI")


def _media_uris(recording: dict) -> list[str]:
    uris = recording.get("mediaUris")
    if not isinstance(uris, dict):
        return []
    return [v["mediaUri"] for _, v in sorted(uris.items())
            if isinstance(v, dict) and isinstance(v.get("mediaUri"), str) and v["mediaUri"]]


class NiceClient(RecordingClient):
    provider = NICE

    def __init__(self, creds: NiceCredentials, rc: RecordingsConfig, fetch_cfg: FetchConfig, resolver=None):
        super().__init__(rc, fetch_cfg, [creds.auth_url, creds.api_url], creds.media_hosts, resolver)
        self.creds = creds

    async def _new_token(self) -> tuple[str, float]:
        body = json.dumps({"accessKeyId": self.creds.access_key_id,
                           "accessKeySecret": self.creds.access_key_secret.get_secret_value()})
        got = await self._api("POST", self.creds.auth_url, "NICE CXone access-key token",
                              headers={"Content-Type": "application/json", "Accept": "application/json"}, data=body)
        return self._token_of(got.body, "NICE CXone access-key token")

    async def fetch_recording(self, session_id: str) -> bytes:
        url = (URL(self.creds.api_url) / "media-playback" / "v1" / "contacts").with_query({
            "acd-call-id": session_id, "media-type": self.creds.media_type, "exclude-waveforms": "true",
            "isDownload": "true"})
        listing = await self.listing(url, "NICE CXone media playback")
        return await self.download(self._file_url(listing))

    @staticmethod
    def _file_url(body: Any) -> str:
        """fileToPlayUrl of the contact's first voice interaction. Keys are matched without
        regard to case and both published shapes are read: `{"interactions": [{"mediaType",
        "data": {"fileToPlayUrl"}}]}` (what integrations parse) and the help page's example
        `{"value": {"Interactions": [{"Interaction": {...}}]}}`."""
        node = _ci(body, "value") if isinstance(_ci(body, "value"), dict) else body
        interactions = _ci(node, "interactions")
        if not isinstance(interactions, list):
            raise ProviderError("PROVIDER_BAD_RESPONSE", "NICE CXone media playback: no interactions list")
        voice = []
        for item in interactions:
            inner = _ci(item, "interaction")
            it = inner if isinstance(inner, dict) else item
            media = str(_ci(it, "mediaType") or "voice-only").lower()
            url = _ci(_ci(it, "data"), "fileToPlayUrl")
            if media in ("voice-only", "voice-and-screen", "voice") and isinstance(url, str) and url:
                voice.append(url)
        if voice:
            return voice[0]
        if interactions:
            raise ProviderError("RECORDING_NOT_READY", "NICE CXone lists the contact but no voice file URL yet",
                                not_ready=True)
        raise ProviderError("RECORDING_NOT_FOUND", "NICE CXone has no recorded interaction for this contact")


def _ci(obj: Any, key: str) -> Any:
    """obj[key] with the key matched regardless of case (None if obj is not a dict or lacks it)."""
    if not isinstance(obj, dict):
        return None
    if key in obj:
        return obj[key]
    low = key.lower()
    return next((v for k, v in obj.items() if isinstance(k, str) and k.lower() == low), None)


def make_client(provider: str, creds, rc: RecordingsConfig, fetch_cfg: FetchConfig, resolver=None) -> RecordingClient:
    if provider == GENESYS:
        return GenesysClient(creds, rc, fetch_cfg, resolver)
    if provider == NICE:
        return NiceClient(creds, rc, fetch_cfg, resolver)
    raise ValueError(provider)
