"""A two-instance cluster per test (tests/cluster/cluster_support.py)."""
from __future__ import annotations

import pytest

from cluster_support import cleanup, start_cluster, stop_cluster, tmpdir


@pytest.fixture
async def cluster(throwaway_pg):
    tmp = tmpdir()
    try:
        c = await start_cluster(tmp, throwaway_pg.dsn)
        try:
            yield c
        finally:
            await stop_cluster(c)
    finally:
        cleanup(tmp)
