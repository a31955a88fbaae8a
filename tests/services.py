"""The local services some tests talk to (PostgreSQL, Redis, NATS with JetStream), over real
connections.

On a machine without one of them, those tests are skipped with a reason that names the service
and how to start it. With VBGW_REQUIRE_SERVICES=1 (set by .ci/run after it started whatever was
not running) a missing service fails the test instead: CI never passes by skipping.

Every test names its own database schema / stream / key, so parallel runs do not collide."""
from __future__ import annotations

import os
import shutil
import socket
import uuid

import pytest

REQUIRED = os.environ.get("VBGW_REQUIRE_SERVICES", "") == "1"

PG_DSN = os.environ.get("VBGW_TEST_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VBGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("VBGW_TEST_NATS_URL", "nats://127.0.0.1:4222")

_START = {
    "postgres": ("127.0.0.1", 5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
    "redis": ("127.0.0.1", 6379, "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' "
                                 "--appendonly no"),
    "nats": ("127.0.0.1", 4222, "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server &"),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def need(service: str) -> None:
    """Skip (or, when services are required, fail) unless `service` answers on its port."""
    host, port, start = _START[service]
    if _reachable(host, port):
        return
    reason = f"{service} is not running on {host}:{port} (start it with: {start})"
    if REQUIRED:
        pytest.fail(reason + "; VBGW_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def need_binary(name: str, why: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path:
        return path
    reason = f"{name} is not installed ({why})"
    if REQUIRED:
        pytest.fail(reason + "; VBGW_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)
    raise AssertionError("unreachable")


def unique(prefix: str) -> str:
    """A name no other test or parallel run uses (schemas, streams, keys)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temporary directory, pg_ctl on a
    free port), which the test may stop, start and restart without touching the machine's
    service. Run as the `postgres` user when the tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        import glob
        import tempfile
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = bins[-1] if bins else shutil.which("initdb")
        if not initdb:
            reason = "PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql)"
            if REQUIRED:
                pytest.fail(reason + "; VBGW_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
            pytest.skip(reason)
        self.bin = os.path.dirname(initdb)
        self.dir = tempfile.mkdtemp(prefix="vbgw-pg-")
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = []
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str, check: bool = True):
        import subprocess
        return subprocess.run([*self._as, f"{self.bin}/{tool}", *args], capture_output=True, text=True,
                              check=check, timeout=120)

    def _ctl(self, action: str, *extra: str) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-o", opts, "-w", "-t", "90",
                  action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: backends end their transactions and quit; `immediate`: every process quits at
        once, as in a crash (nothing in flight can finish: the next start recovers)."""
        self._ctl("stop", "-m", mode)

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def destroy(self) -> None:
        self._run("pg_ctl", "-D", f"{self.dir}/data", "stop", "-m", "immediate", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
