"""The `[recordings]` configuration section (config/default.toml says what each key is;
docs/recordings.md how to set up each provider).

Provider credentials live per tenant, under the tenant's name or id:

    [recordings.tenants.acme.nice]
    api_url = "https://api-na1.niceincontact.com"
    auth_url = "https://na1.nice-incontact.com/authentication/v1/token/access-key"
    access_key_id = "..."
    access_key_secret = "..."          # or VBGW_RECORDINGS__TENANTS='{"acme": {...}}'

Secrets are SecretStr: they print as '**********', never reach a log line or an error
message, and are revealed only to build the token request."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from yarl import URL

from gateway.services.recordings.media import ChannelMap, Role

GENESYS = "GENESYS"
NICE = "NICE_IN_CONTACT"
# What clients send as ccaas_provider (case-insensitive) -> the provider it means.
PROVIDER_ALIASES = {
    "GENESYS": GENESYS, "GENESYS_CLOUD": GENESYS, "GENESYS_CLOUD_CX": GENESYS, "PURECLOUD": GENESYS,
    "NICE_IN_CONTACT": NICE, "NICE_INCONTACT": NICE, "NICE": NICE, "NICE_CXONE": NICE, "CXONE": NICE,
    "INCONTACT": NICE,
}
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def provider_of(raw: str | None) -> str | None:
    """The canonical provider for a ccaas_provider value (None: not one vbgw knows)."""
    return PROVIDER_ALIASES.get((raw or "").strip().upper().replace("-", "_").replace(" ", "_"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _base_url(v: str) -> str:
    """An absolute http(s) URL without credentials, query or fragment; https unless the host
    is loopback (a local proxy or a test): provider credentials never cross a network in clear."""
    u = URL(v.strip())
    if u.scheme not in ("http", "https") or not u.host or u.user or u.password or u.query_string or u.fragment:
        raise ValueError(f"{v!r}: want an absolute https URL with no credentials, query or fragment")
    if u.scheme == "http" and u.host not in _LOOPBACK_HOSTS:
        raise ValueError(f"{v!r}: provider APIs are reached over https only (http only for loopback)")
    return str(u).rstrip("/")


class _ProviderSection(_Section):
    # Hosts recordings may be downloaded from besides the API host (pre-signed storage URLs);
    # exact names, *.domain or IP literals, checked like fetch.allowed_hosts.
    media_hosts: list[str] = []

    @field_validator("api_url", "auth_url", "login_url", check_fields=False)
    @classmethod
    def _url(cls, v: str) -> str:
        return _base_url(v)


class GenesysCredentials(_ProviderSection):
    """Genesys Cloud OAuth client (client credentials grant) of one organisation."""
    login_url: str = "https://login.mypurecloud.com"      # region's login host (/oauth/token)
    api_url: str = "https://api.mypurecloud.com"          # region's API host
    client_id: str
    client_secret: SecretStr
    format_id: Literal["WAV", "WAV_ULAW"] = "WAV"          # formats vbgw decodes
    max_wait_ms: int = Field(default=5000, ge=0, le=60000)         # the recordings API's own wait


class NiceCredentials(_ProviderSection):
    """NICE CXone access key of one business unit (API user with Play/download recordings)."""
    auth_url: str = "https://na1.nice-incontact.com/authentication/v1/token/access-key"
    api_url: str = "https://api-na1.niceincontact.com"
    access_key_id: str
    access_key_secret: SecretStr
    media_type: Literal["voice-only", "all", "voice-and-screen"] = "voice-only"


class TenantProviders(_Section):
    genesys: GenesysCredentials | None = None
    nice: NiceCredentials | None = None

    def for_provider(self, provider: str) -> GenesysCredentials | NiceCredentials | None:
        return self.genesys if provider == GENESYS else self.nice if provider == NICE else None


class RecordingsConfig(_Section):
    """Enrolment from recordings: channel maps, job retries, download limits, credentials."""
    # Who is on each channel of a stereo recording, left first; exactly one "customer".
    # A ccaas_provider not listed (or none) uses "default"; mono files are used as they are.
    channel_maps: dict[str, list[Literal["customer", "agent", "other"]]] = {
        NICE: ["agent", "customer"], GENESYS: ["customer", "agent"], "default": ["customer", "agent"]}
    # Downloads of one recording: largest body, whole download time.
    max_download_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    download_timeout_s: float = Field(default=300.0, gt=0)
    # Provider API calls (token, recording metadata): whole request time, largest answer.
    api_timeout_s: float = Field(default=30.0, gt=0)
    api_max_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Jobs: attempts per job (provider failures: 429, 5xx, timeouts), exponential backoff
    # between them (base, cap; a Retry-After is honoured up to max_retry_after_s), the wait
    # between polls of a recording that is still being processed, and the job's whole life.
    max_attempts: int = Field(default=6, ge=1, le=100)
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=120.0, gt=0)
    max_retry_after_s: float = Field(default=600.0, gt=0)
    processing_poll_s: float = Field(default=15.0, gt=0)
    job_deadline_s: float = Field(default=3600.0, gt=0)
    max_concurrent_jobs: int = Field(default=2, ge=1, le=64)
    # Finished jobs are kept (for their status) this long, then deleted.
    job_retention_s: float = Field(default=7 * 86400.0, gt=0)
    tenants: dict[str, TenantProviders] = {}

    @field_validator("channel_maps")
    @classmethod
    def _maps(cls, v: dict[str, list[Role]]) -> dict[str, list[Role]]:
        out = {}
        for name, roles in v.items():
            try:
                ChannelMap(tuple(roles))
            except ValueError as exc:
                raise ValueError(f"channel_maps.{name}: {exc}") from None
            key = name if name == "default" else (provider_of(name) or name.upper())
            out[key] = roles
        out.setdefault("default", ["customer", "agent"])
        return out

    @model_validator(mode="after")
    def _retry_order(self) -> "RecordingsConfig":
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("retry_base_s must not exceed retry_max_s")
        return self

    def channel_map(self, provider: str | None) -> ChannelMap:
        key = provider_of(provider) or (provider or "").upper()
        return ChannelMap(tuple(self.channel_maps.get(key) or self.channel_maps["default"]))

    def credentials(self, tenant_id: str, tenant_name: str, provider: str):
        """The provider credentials configured for a tenant (by id, then by name), or None."""
        t = self.tenants.get(tenant_id) or self.tenants.get(tenant_name)
        return t.for_provider(provider) if t is not None else None
