"""The repository fixture: every test in tests/store runs against SQLite and PostgreSQL (its
own schema, dropped afterwards), each store with its own data key."""
from __future__ import annotations

import pytest

import services
from store_support import Raw, make_store


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request, tmp_path):
    """(kind, target): the SQLite file or the PostgreSQL schema of this test."""
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "vbgw.sqlite3")
        return
    services.need("postgres")
    schema = services.unique("t")
    yield "postgres", schema
    await services.drop_schema(schema)


@pytest.fixture
def data_keys():
    from gateway.store.keys import DataKeys, new_key
    return DataKeys([new_key()])


@pytest.fixture
async def repo(backend, data_keys):
    store = make_store(*backend, data_keys)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def raw(backend) -> Raw:
    return Raw(*backend)


@pytest.fixture
async def profile(repo):
    from gateway.store.base import ProfileSettings
    t = await repo.ensure_tenant("acme")
    g = await repo.ensure_group(t.id, "default")
    return await repo.create_profile(t.id, g.id, "retail", ProfileSettings())
