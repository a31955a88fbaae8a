"""Two real `vbgw serve` processes in shared mode behind haproxy, with services of the test's
own: a PostgreSQL database (on the throwaway cluster of tests/conftest.py), a private
redis-server and a private nats-server (JetStream) on free ports, which a test may kill and
start again without touching the machine's services. Missing binaries skip the tests with a
reason (fail under VBGW_REQUIRE_SERVICES=1: tests/services.py).

haproxy routes a request to instance "a" or "b" when it carries `X-Route: a|b`, else round
robin: a test says where each client lands."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import services
from support import REPO

sys.path.append(str(Path(__file__).resolve().parents[1] / "live"))
sys.path.append(str(Path(__file__).resolve().parents[1] / "audiohook"))

from live_support import LiveCall, speech  # noqa: E402


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if services._reachable("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Daemon:
    """A process of the test's own on a fixed port, which it can kill and start again."""

    def __init__(self, argv: list[str], port: int, log: Path):
        self.argv, self.port, self.log = argv, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        _wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()


def redis_server(tmp: Path) -> Daemon:
    binary = services.need_binary("redis-server", "the cluster tests run a Redis of their own")
    port = services.free_port()
    return Daemon([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                   "--dir", str(tmp)], port, tmp / "redis.log")


def nats_server(tmp: Path) -> Daemon:
    binary = services.need_binary("nats-server", "the cluster tests run a NATS (JetStream) of their own")
    port = services.free_port()
    (tmp / "nats").mkdir(exist_ok=True)
    return Daemon([binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp / "nats")], port,
                  tmp / "nats.log")


HAPROXY_CFG = """
global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 300s
frontend fe
    bind 127.0.0.1:{port}
    use_backend be_a if {{ req.hdr(x-route) -m str a }}
    use_backend be_b if {{ req.hdr(x-route) -m str b }}
    default_backend be_all
backend be_a
    server a 127.0.0.1:{a}
backend be_b
    server b 127.0.0.1:{b}
backend be_all
    balance roundrobin
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}
"""


def haproxy(tmp: Path, a: int, b: int) -> Daemon:
    binary = services.need_binary("haproxy", "the cluster tests put haproxy in front of two instances "
                                             "(apt-get install haproxy)")
    port = services.free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, a=a, b=b))
    return Daemon([binary, "-db", "-f", str(cfg)], port, tmp / "haproxy.log")


@dataclass
class Instance:
    name: str
    port: int
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=REPO, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.data_dir / "server.log", "ab"))

    async def ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"instance {self.name} exited: {self.log()[-3000:]}")
                try:
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"instance {self.name} not ready: {self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")


@dataclass
class Cluster:
    tmp: Path
    dsn: str
    redis: Daemon
    nats: Daemon
    lb: Daemon
    a: Instance
    b: Instance
    env: dict[str, str]
    pat: str = ""
    prefix: str = ""
    nats_stream: str = ""
    http: aiohttp.ClientSession = field(default=None)   # type: ignore[assignment]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.lb.port}"

    def settings(self, data_dir: Path):
        """The instances' configuration, in this process (for `vbgw audiohook add-org`)."""
        from gateway.infra.config import env_overrides, load_settings
        over = env_overrides(self.env)
        over.setdefault("server", {})["data_dir"] = str(data_dir)
        over["server"]["port"] = self.a.port
        return load_settings(environ={}, overrides=over)

    async def token(self, master_id: str, route: str | None = None, profile: str = "retail") -> str:
        headers = {"Authorization": f"Bearer {self.pat}", **({"X-Route": route} if route else {})}
        async with self.http.post(f"{self.url}/api/token/", headers=headers, json={
                "agentId": "a1", "agentSkill": "s", "masterId": master_id, "tenantId": "acme", "vbProfile": profile,
                "ccaasProvider": "GENESYS", "customProperties": {}}) as r:
            body = await r.json()
            assert r.status == 200, body
            return body["data"]["token"]

    async def call(self, route: str, method: str, path: str, token: str, **kw) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}", "X-Route": route}
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    def open_sse(self, route: str, path: str, token: str, **params):
        return self.http.get(f"{self.url}{path}", params={"token": token, **params}, headers={"X-Route": route},
                             timeout=aiohttp.ClientTimeout(total=None, sock_read=None))

    async def jetstream(self, min_count: int = 1, timeout: float = 30.0) -> list:
        """The events JetStream holds (every message of the test's stream), once at least `min_count`."""
        import nats
        nc = await nats.connect(f"nats://127.0.0.1:{self.nats.port}")
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    info = await js.stream_info(self.nats_stream)
                    n = info.state.messages
                except Exception:            # noqa: BLE001 - not created yet
                    n = 0
                if n >= min_count or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            out = []
            for seq in range(1, n + 1):
                out.append(await js.get_msg(self.nats_stream, seq))
            return out
        finally:
            await nc.close()


async def start_cluster(tmp: Path, pg_dsn: str, lease_s: float = 3.0, extra_env: dict[str, str] | None = None) -> Cluster:
    """Everything up: database, Redis, NATS, two instances (a, b) and haproxy; bootstrapped
    (tenant acme, profile retail, a PAT). `extra_env`: more VBGW_ settings of both instances."""
    import asyncpg
    # Every binary first: a missing one skips the test before anything is started (a skip
    # raised after the instances started left them, Redis and NATS running after the test).
    services.need_binary("haproxy", "the cluster tests put haproxy in front of two instances "
                                    "(apt-get install haproxy)")
    dbname = services.unique("vbgw_cluster")
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await conn.close()
    dsn = pg_dsn.rsplit("/", 1)[0] + "/" + dbname
    redis, nats = redis_server(tmp), nats_server(tmp)
    started: list[Daemon | Instance] = []
    try:
        return await _start_cluster(tmp, pg_dsn, dsn, redis, nats, started, lease_s, extra_env)
    except BaseException:
        for d in reversed(started):       # stop_cluster never sees a cluster that failed to start
            d.stop() if isinstance(d, Instance) else d.kill()
        raise


async def _start_cluster(tmp: Path, pg_dsn: str, dsn: str, redis: Daemon, nats: Daemon,
                         started: list, lease_s: float, extra_env: dict[str, str] | None) -> Cluster:
    redis.start()
    started.append(redis)
    nats.start()
    started.append(nats)
    prefix = services.unique("c")
    stream = services.unique("EV").upper()
    ports = services.free_port(), services.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VBGW_")}
    env.update({
        "VBGW_CLUSTER__MODE": "shared", "VBGW_CLUSTER__REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "VBGW_CLUSTER__REDIS_PREFIX": prefix, "VBGW_CLUSTER__SECRET": secrets.token_hex(24),
        "VBGW_CLUSTER__LEASE_S": str(lease_s), "VBGW_STORAGE__DSN": dsn, "VBGW_STORAGE__RETRY_S": "20",
        "VBGW_AUTH__HASH_SECRET": secrets.token_hex(16),
        "VBGW_ENCRYPTION__KEYS": base64.b64encode(os.urandom(32)).decode(),
        "VBGW_EVENTS__SINKS": '["jsonl","nats"]', "VBGW_EVENTS__NATS_URL": f"nats://127.0.0.1:{nats.port}",
        "VBGW_EVENTS__NATS_STREAM": stream, "VBGW_EVENTS__NATS_SUBJECT_PREFIX": f"{prefix}.events",
        "VBGW_EVENTS__BACKOFF_MAX_S": "1", "VBGW_EVENTS__TIMEOUT_S": "2",
        "VBGW_DIALOGS__RETAIN_AFTER_CLOSE_S": "600", "VBGW_SERVER__SHUTDOWN_GRACE_S": "2",
        "VBGW_LOGGING__LEVEL": "info",
    })
    env.update(extra_env or {})
    insts = []
    for name, port in zip("ab", ports):
        data = tmp / f"var-{name}"
        data.mkdir()
        e = dict(env, VBGW_CLUSTER__INSTANCE_ID=name, VBGW_CLUSTER__ADVERTISE_URL=f"http://127.0.0.1:{port}")
        insts.append(Instance(name, port, data, e))
    a, b = insts
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "admin", "--data-dir", str(a.data_dir), "bootstrap",
                          "--tenant", "acme", "--profile", "retail"], cwd=REPO, env=a.env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    pat = out.stdout.strip().splitlines()[-1].removeprefix("pat=")
    # a second profile of the same group (the ownership rule across instances)
    subprocess.run([sys.executable, "-m", "gateway.cli", "admin", "--data-dir", str(a.data_dir), "profile",
                    "--tenant", "acme", "--name", "other"], cwd=REPO, env=a.env, capture_output=True, check=True,
                   timeout=120)
    a.start()
    started.append(a)
    b.start()
    started.append(b)
    lb = haproxy(tmp, a.port, b.port)
    lb.start()
    started.append(lb)
    await asyncio.gather(a.ready(), b.ready())
    c = Cluster(tmp, dsn, redis, nats, lb, a, b, env, pat, prefix, stream)
    c.http = aiohttp.ClientSession()
    return c


async def stop_cluster(c: Cluster) -> None:
    if c.http is not None:
        await c.http.close()
    for inst in (c.a, c.b):
        inst.stop()
    for d in (c.lb, c.redis, c.nats):
        d.kill()


def logs_of(c: Cluster) -> str:
    return "\n".join(f"--- {i.name}\n{i.log()[-4000:]}" for i in (c.a, c.b))


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="vbgw-cluster-"))


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def events_of(msgs) -> list[tuple[str, dict, str]]:
    """(message type, event, Nats-Msg-Id) of JetStream messages."""
    return [(m.headers.get("VBGW-Event"), json.loads(m.data), m.headers.get("Nats-Msg-Id")) for m in msgs]


ENROL = "1688_enrol0"
TEST = ("1688_test0", "1688_test1", "1688_test2")      # 12 s of the same speaker


def stream(c: Cluster, route: str, token: str, dialog_id: str) -> LiveCall:
    """A direct-stream call on the instance `route` names (haproxy X-Route), held open between sends."""
    return LiveCall(c, token, dialog_id, headers={"X-Route": route})


def on(route: str) -> dict[str, str]:
    """The headers that make haproxy send a client to instance `route`."""
    return {"X-Route": route}


async def enrol_on_a_asked_on_b(c: Cluster, user: str = "cust-1688", master: str = "enrol-1") -> str:
    tok = await c.token(master, route="b")
    async with stream(c, "a", tok, master) as s:
        await s.send(speech(ENROL))
        await s.end()
    status, body = await c.call("b", "POST", "/enrol", tok, json={"user_id": user})
    assert status == 200, (body, logs_of(c))
    return tok


def verify_speech() -> bytes:
    return b"".join(speech(n) for n in TEST)
