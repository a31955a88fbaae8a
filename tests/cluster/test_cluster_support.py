"""The cluster tests' own harness: a machine without one of the binaries skips the tests
before anything is started (a skip raised after the instances had started left two gateways,
a Redis and a NATS running per test on a machine without haproxy)."""
from __future__ import annotations

import pytest

import cluster_support
from cluster_support import start_cluster


async def test_a_missing_haproxy_skips_before_anything_starts(monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(cluster_support.Daemon, "start", lambda self: started.append(self))
    monkeypatch.setattr(cluster_support.Instance, "start", lambda self: started.append(self))

    def need_binary(name: str, why: str) -> str:
        if name == "haproxy":
            pytest.skip(why)
        return "/bin/true"

    monkeypatch.setattr(cluster_support.services, "need_binary", need_binary)
    with pytest.raises(pytest.skip.Exception):
        await start_cluster(tmp_path, "postgresql://127.0.0.1:1/unused")
    assert started == []
