"""Shared fixtures: one engine per test process (model loading is the slow part), and a
real gateway on a loopback port per test, with its own data directory."""
from __future__ import annotations

import aiohttp
import pytest

from support import Gateway, admin, gateway_settings, pat_of


@pytest.fixture(scope="session")
def engine():
    from engine import Engine, EngineConfig, fetch_models
    cfg = EngineConfig()
    fetch_models(cfg.model_dir)
    return Engine.load(cfg)


@pytest.fixture
def settings(tmp_path):
    return gateway_settings(tmp_path)


@pytest.fixture
async def gateway(settings, engine, aiohttp_server):
    from gateway.app import create_app
    pat = pat_of(await admin(settings, "bootstrap", "--tenant", "acme", "--profile", "retail"))
    app = create_app(settings, engine=engine)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        yield Gateway(base, f"ws://127.0.0.1:{server.port}", http, settings, pat, server.app)


@pytest.fixture(scope="session")
def throwaway_pg():
    """A PostgreSQL cluster of the tests' own (tests/services.py), running; tests that stop it
    start it again before they end."""
    import services
    pg = services.ThrowawayPostgres()
    pg.start()
    yield pg
    pg.destroy()


# -- the two tiers: `make test-fast` runs what is not e2e -------------------------------------
# e2e: needs the models, a running gateway, a server process or browser, or a service
# (PostgreSQL, Redis, NATS). Everything else is a unit test: no models, no servers.
E2E_FIXTURES = {"engine", "engine_sync", "model_dir", "gateway", "gateway_process", "throwaway_pg",
                "aiohttp_server", "aiohttp_client"}
E2E_MODULES = {"test_serve_process", "test_serve_logs", "test_startup", "test_operator_tools", "test_event_brokers",
               "test_postgres_gateway", "test_postgres_faults", "test_audiohook_cli", "test_image", "test_api_docs",
               "test_readonly_models", "test_det_plot", "test_key_rotation"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (E2E_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in E2E_MODULES
                or "postgres" in str(params.get("backend", ""))):
            item.add_marker(pytest.mark.e2e)
