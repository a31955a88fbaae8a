"""A real gateway whose acme tenant has Genesys Cloud and NICE CXone recording credentials
pointing at local fake providers (fake_providers.py) on 127.0.0.1, which is made reachable
by listing exactly that address in fetch.allowed_networks (every other loopback, private or
link-local address stays refused, as in production). Retry timings are shortened so that
retries happen within a test; the limits are the real code paths."""
from __future__ import annotations

import pytest

from fake_providers import FakeProvider, recordings_overrides


@pytest.fixture
async def providers(aiohttp_server):
    genesys, nice = FakeProvider("genesys"), FakeProvider("nice")
    for fake in (genesys, nice):
        server = await aiohttp_server(fake.app(), host="127.0.0.1")
        fake.port = server.port
    yield genesys, nice
    for fake in (genesys, nice):
        fake.release.set()


@pytest.fixture
def settings(tmp_path, providers):
    """The root conftest's `gateway` fixture runs with these settings in this package."""
    from gateway.infra.config import load_settings
    genesys, nice = providers
    return load_settings(environ={}, overrides=recordings_overrides(tmp_path, genesys, nice))
