"""Safe URL fetching for audio sources (Aculab `wav_file_url`, recording downloads).

A gateway that downloads URLs its clients name is a server-side request forgery (SSRF) risk:
a client could make it read the cloud metadata service, an admin port on loopback or a
host on the private network. `UrlFetcher.fetch` therefore fetches a URL only when

* the scheme is http or https, the URL carries no user:password, the port is allowed;
* the host is on the configured allow-list (`allowed_hosts`: exact names or `*.suffix`;
  an empty list disables fetching);
* every address the host resolves to is globally routable: never loopback, private,
  link-local (cloud metadata 169.254.169.254), unique-local, CGNAT, multicast, reserved or
  unspecified, nor an IPv4 address hidden in IPv6 (mapped, 6to4, Teredo), unless it lies in
  a network the operator listed in `allowed_networks`. The check runs inside the connector's
  resolver (`GuardedResolver`), after DNS resolution, on the very addresses aiohttp then
  connects to (no DNS cache): there is no second lookup a DNS rebinding could answer
  differently. IP-literal hosts, which aiohttp does not resolve, are checked before the
  request;
* redirects are followed by hand (at most `max_redirects`), each hop checked like the first;
* the body is streamed and the download aborted as soon as it passes `max_bytes` (a larger
  Content-Length is refused before reading); the whole fetch, redirects included, must end
  within `total_timeout_s`, each connection within `connect_timeout_s`.

Failures raise `FetchError` with a stable `code` (`FETCH_CODES`). Proxies from the
environment are ignored (a proxy would make the address check moot), cookies are not kept,
and URLs are never logged (pre-signed URLs carry credentials in the query): only the host.

API calls (the recording providers' token and metadata requests, gateway/services/recordings/) use the
same fetcher with `request()`: another method, headers and a body, per-call size and time
limits. A request that is not a GET is never redirected (a redirected POST would resend
credentials to wherever the answer points); an `Authorization` header is dropped when a
redirect leaves the origin; a refused status carries the server's `Retry-After` (seconds).
"""
from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

log = structlog.get_logger(__name__)

FETCH_CODES = {
    "FETCH_DISABLED": "no host is allowed (fetch.allowed_hosts is empty)",
    "BAD_URL": "not an absolute http(s) URL with a host, or it carries credentials",
    "UNSUPPORTED_SCHEME": "only http and https are fetched",
    "NOT_ALLOWED_HOST": "the host is not on fetch.allowed_hosts",
    "NOT_ALLOWED_PORT": "the port is not in fetch.allowed_ports",
    "PRIVATE_ADDRESS": "the host resolves to an address that is not publicly routable",
    "DNS_FAILURE": "the host name does not resolve",
    "CONNECT_FAILED": "no connection could be made (refused, reset, TLS failure)",
    "TIMEOUT": "the connection or the whole fetch took too long",
    "TOO_LARGE": "the body is larger than fetch.max_bytes",
    "TOO_MANY_REDIRECTS": "more redirects than fetch.max_redirects (or a redirect loop)",
    "BAD_REDIRECT": "a redirect without a usable Location, or a redirected request that is not a GET",
    "HTTP_STATUS": "the server answered with a status other than 2xx",
}
_HOST_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Not routable on the internet, yet not all flagged by ipaddress's is_global: IETF protocol
# assignments (Oracle Cloud's metadata service is 192.0.0.192), and the metadata addresses
# named outright in case a Python version classifies their ranges differently.
DENIED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.0.0/24", "169.254.0.0/16", "100.64.0.0/10", "fd00:ec2::/32", "fe80::/10"))
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024


class FetchConfig(BaseModel):
    """The `[fetch]` section of the configuration (config/default.toml says what each key is)."""
    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = []
    allowed_networks: list[str] = []
    allowed_ports: list[int] = [80, 443]
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    total_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=20)
    user_agent: str = "vbgw-fetch/1"

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for raw in v:
            h = raw.strip().lower().rstrip(".")
            if not (_is_ip(h) or _HOST_RE.match(h)):
                raise ValueError(f"allowed_hosts entry {raw!r}: want a host name, *.domain or an IP address")
            out.append(h.strip("[]") if _is_ip(h) else h)
        return out

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"allowed_networks entry {n!r} is not a CIDR network") from None
        return v

    @field_validator("allowed_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 1 <= p <= 65535:
                raise ValueError(f"allowed_ports entry {p} is not a TCP port")
        return v


class FetchError(Exception):
    """A fetch refused or failed; `code` is one of FETCH_CODES, `status` the HTTP status for
    HTTP_STATUS and `retry_after` the seconds its Retry-After header asked for (None if it had
    none). The message names the host, never the full URL."""

    def __init__(self, code: str, message: str, status: int | None = None, retry_after: float | None = None):
        assert code in FETCH_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header value asks for: delta-seconds or an HTTP date (RFC 9110
    10.2.3); None when absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Fetched:
    """A successful fetch: the body (at most max_bytes), its Content-Type, the final URL and
    the redirects followed (hosts only are safe to show; the URLs may carry credentials), and
    the response's Retry-After in seconds (a 202 "not ready yet" may carry one)."""
    url: str
    status: int
    content_type: str
    body: bytes
    redirects: list[str] = field(default_factory=list)
    retry_after: float | None = None


# ----------------------------------------------------------------------------- policy
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
        return True
    except ValueError:
        return False


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """An IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64 well-known)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressPolicy:
    """Which hosts and addresses may be fetched (from FetchConfig)."""

    def __init__(self, cfg: FetchConfig):
        self.hosts = {h for h in cfg.allowed_hosts if not h.startswith("*.")}
        self.suffixes = tuple(h[1:] for h in cfg.allowed_hosts if h.startswith("*."))   # ".example.com"
        self.networks = [ipaddress.ip_network(n, strict=False) for n in cfg.allowed_networks]
        self.ports = set(cfg.allowed_ports)

    @property
    def enabled(self) -> bool:
        return bool(self.hosts or self.suffixes)

    def host_allowed(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        if _is_ip(h):
            h = str(ipaddress.ip_address(h.strip("[]").split("%")[0]))
            return h in {str(ipaddress.ip_address(x)) for x in self.hosts if _is_ip(x)}
        return h in self.hosts or any(h.endswith(s) for s in self.suffixes)

    def address_allowed(self, address: str) -> bool:
        """Globally routable, or inside an operator-listed network."""
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if any(ip in n for n in self.networks if n.version == ip.version):
            return True
        if ip.version == 6:
            v4 = _embedded_v4(ip)
            if v4 is not None and not self.address_allowed(str(v4)):
                return False
        if any(ip in n for n in DENIED_NETWORKS if n.version == ip.version):
            return False
        return ip.is_global and not ip.is_multicast and not ip.is_reserved and not ip.is_unspecified


class GuardedResolver(AbstractResolver):
    """Resolves with an inner resolver and refuses the host when any address it resolves to
    is not allowed. aiohttp connects to exactly the addresses returned here (the connector is
    built with use_dns_cache=False), so the check and the connection use one lookup."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None):
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()
        self.lookups = 0

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.lookups += 1
        try:
            results = await self.inner.resolve(host, port, family)
        except OSError as exc:
            raise FetchError("DNS_FAILURE", f"{host} does not resolve ({exc.strerror or exc})") from None
        if not results:
            raise FetchError("DNS_FAILURE", f"{host} does not resolve")
        bad = [r["host"] for r in results if not self.policy.address_allowed(r["host"])]
        if bad:
            raise FetchError("PRIVATE_ADDRESS", f"{host} resolves to {bad[0]}, which is not a public address")
        return results

    async def close(self) -> None:
        await self.inner.close()


# ----------------------------------------------------------------------------- fetcher
class UrlFetcher:
    """Fetches allowed URLs (see the module docstring). One aiohttp session per fetcher;
    `close()` it (or use `async with`)."""

    def __init__(self, cfg: FetchConfig, resolver: AbstractResolver | None = None,
                 ssl: Any = True):
        self.cfg = cfg
        self.policy = AddressPolicy(cfg)
        self.resolver = GuardedResolver(self.policy, resolver)
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "UrlFetcher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=self.resolver, use_dns_cache=False, ssl=self._ssl,
                                             limit=16, force_close=True)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout_s),
                headers={"User-Agent": self.cfg.user_agent, "Accept-Encoding": "identity"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str | URL) -> URL:
        """The URL if fetching it may be tried (scheme, credentials, host, port, IP literal);
        FetchError otherwise. Addresses of host names are checked at connection time."""
        if not self.policy.enabled:
            raise FetchError("FETCH_DISABLED", "fetching URLs is disabled (no fetch.allowed_hosts configured)")
        try:
            u = URL(str(url))
        except (ValueError, TypeError):
            raise FetchError("BAD_URL", "not a valid URL") from None
        if u.scheme and u.scheme not in ("http", "https"):
            raise FetchError("UNSUPPORTED_SCHEME", f"scheme {u.scheme!r} is not fetched; use http or https")
        if not u.is_absolute() or not u.host:
            raise FetchError("BAD_URL", "the URL must be absolute (http://host/... or https://host/...)")
        if u.user is not None or u.password is not None:
            raise FetchError("BAD_URL", f"URL for {u.host} carries credentials; they are not accepted")
        host = u.host
        if not self.policy.host_allowed(host):
            raise FetchError("NOT_ALLOWED_HOST", f"host {host} is not on the fetch allow-list")
        if u.port not in self.policy.ports:
            raise FetchError("NOT_ALLOWED_PORT", f"port {u.port} of {host} is not allowed")
        if _is_ip(host) and not self.policy.address_allowed(host):
            raise FetchError("PRIVATE_ADDRESS", f"{host} is not a public address")
        return u

    async def fetch(self, url: str) -> Fetched:
        """GET the URL under the policy; the body in memory (at most max_bytes)."""
        return await self.request("GET", url)

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      data: Any = None, max_bytes: int | None = None,
                      timeout_s: float | None = None) -> Fetched:
        """One request under the policy (module docstring): `max_bytes` and `timeout_s`
        override the configured limits for this call (a provider's small JSON answers get
        small limits, its recordings large ones)."""
        u = self.check_url(url)
        total = self.cfg.total_timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(total):
                return await self._follow(u, method.upper(), dict(headers or {}), data,
                                          self.cfg.max_bytes if max_bytes is None else max_bytes)
        except TimeoutError:
            raise FetchError("TIMEOUT", f"fetching from {u.host} took longer than {total:g} s") from None

    async def _follow(self, u: URL, method: str, headers: dict[str, str], data: Any, limit: int) -> Fetched:
        seen = {str(u)}
        redirects: list[str] = []
        while True:
            try:
                async with self._client().request(method, u, headers=headers, data=data,
                                                  allow_redirects=False) as resp:
                    if resp.status in REDIRECT_STATUSES:
                        loc = resp.headers.get("Location")
                        if not loc:
                            raise FetchError("BAD_REDIRECT", f"{u.host} answered {resp.status} without a Location")
                        if method != "GET":
                            raise FetchError("BAD_REDIRECT", f"{u.host} redirected a {method}; only GETs are "
                                                             "redirected")
                        try:
                            nxt = u.join(URL(loc))
                        except (ValueError, TypeError):
                            raise FetchError("BAD_REDIRECT", f"{u.host} redirected to an invalid URL") from None
                        if len(redirects) >= self.cfg.max_redirects or str(nxt) in seen:
                            raise FetchError("TOO_MANY_REDIRECTS",
                                             f"more than {self.cfg.max_redirects} redirects (or a loop) "
                                             f"starting at {redirects[0] if redirects else u.host}")
                        redirects.append(u.host or "")       # check_url: every URL has a host
                        nxt = self.check_url(nxt.with_fragment(None))
                        if nxt.origin() != u.origin():
                            # credentials are for the origin they were issued by, never a redirect target
                            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                        u = nxt
                        seen.add(str(u))
                        continue
                    wait = retry_after_s(resp.headers.get("Retry-After"))
                    if not 200 <= resp.status < 300:
                        raise FetchError("HTTP_STATUS", f"{u.host} answered HTTP {resp.status}", status=resp.status,
                                         retry_after=wait)
                    body = await self._read(resp, u.host or "", limit)
                    return Fetched(str(u), resp.status, resp.headers.get("Content-Type", ""), body, redirects, wait)
            except FetchError:
                raise
            except aiohttp.ConnectionTimeoutError:
                raise FetchError("TIMEOUT", f"connecting to {u.host} took longer than "
                                            f"{self.cfg.connect_timeout_s:g} s") from None
            except aiohttp.ClientConnectorDNSError as exc:
                raise FetchError("DNS_FAILURE", f"{u.host} does not resolve ({exc.os_error})") from None
            except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
                raise FetchError("CONNECT_FAILED", f"{u.host}: {type(exc).__name__}") from None
            except aiohttp.ClientResponseError as exc:
                raise FetchError("CONNECT_FAILED", f"{u.host}: bad HTTP response ({exc.status})") from None

    async def _read(self, resp: aiohttp.ClientResponse, host: str, limit: int) -> bytes:
        if resp.content_length is not None and resp.content_length > limit:
            raise FetchError("TOO_LARGE", f"{host} announced {resp.content_length} bytes; the limit is {limit}")
        parts, total = [], 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            total += len(chunk)
            if total > limit:
                raise FetchError("TOO_LARGE", f"the body from {host} is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)
