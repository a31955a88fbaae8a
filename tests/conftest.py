"""Shared fixtures: one engine per test process (model loading is the slow part), and a
real gateway on a loopback port per test, with its own data directory."""
from __future__ import annotations

import aiohttp
import pytest

from support import Gateway, admin, pat_of


@pytest.fixture(scope="session")
def engine():
    from engine import Engine, EngineConfig, fetch_models
    cfg = EngineConfig()
    fetch_models(cfg.model_dir)
    return Engine.load(cfg)


@pytest.fixture
def settings(tmp_path):
    from gateway.infra.config import load_settings
    return load_settings(environ={}, overrides={
        "server": {"data_dir": str(tmp_path / "var"), "port": 0, "shutdown_grace_s": 1},
        "events": {"jsonl_path": str(tmp_path / "var" / "events.jsonl")},
        "dialogs": {"retain_after_close_s": 600},
    })


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
