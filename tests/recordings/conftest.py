"""A real gateway whose acme tenant has Genesys Cloud and NICE CXone recording credentials
pointing at local fake providers (fake_providers.py) on 127.0.0.1, which is made reachable
by listing exactly that address in fetch.allowed_networks (every other loopback, private or
link-local address stays refused, as in production). Retry timings are shortened so that
retries happen within a test; the limits are the real code paths."""
from __future__ import annotations

import pytest

from fake_providers import FakeProvider


@pytest.fixture
async def providers(aiohttp_server):
    genesys, nice = FakeProvider("genesys"), FakeProvider("nice")
    for fake in (genesys, nice):
        server = await aiohttp_server(fake.app(), host="127.0.0.1")
        fake.port = server.port
    yield genesys, nice
    for fake in (genesys, nice):
        fake.release.set()


def recordings_overrides(tmp_path, genesys: FakeProvider, nice: FakeProvider, **recordings) -> dict:
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


@pytest.fixture
def settings(tmp_path, providers):
    """The root conftest's `gateway` fixture runs with these settings in this package."""
    from gateway.infra.config import load_settings
    genesys, nice = providers
    return load_settings(environ={}, overrides=recordings_overrides(tmp_path, genesys, nice))
