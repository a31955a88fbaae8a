"""Durable events to NATS JetStream and Redis Streams, over real connections: the machine's
services for the happy path (each test with its own stream), and broker processes of the
test's own (nats-server / redis-server on a free port) for outages: events published while the
broker is down wait in the on-disk outbox, survive a gateway restart, and are delivered once,
in order, with their event ids, after the broker returns."""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest

import services
from gateway.events.sinks import EventsConfig, NatsSink, RedisStreamSink, build_sink, event_id
from test_events import enrolment, verification


async def wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def nats_cfg(tmp_path: Path, url: str, name: str) -> EventsConfig:
    return EventsConfig(sinks=["nats"], nats_url=url, nats_stream=name, nats_subject_prefix=f"vbgwtest.{name}",
                        nats_outbox_path=tmp_path / "outbox-nats.sqlite3", backoff_initial_s=0.05,
                        backoff_max_s=0.3, timeout_s=2.0)


def redis_cfg(tmp_path: Path, url: str, name: str) -> EventsConfig:
    return EventsConfig(sinks=["redis"], redis_url=url, redis_stream=name,
                        redis_outbox_path=tmp_path / "outbox-redis.sqlite3", backoff_initial_s=0.05,
                        backoff_max_s=0.3, timeout_s=2.0)


async def jetstream_messages(url: str, stream: str) -> list:
    import nats
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


async def delete_stream(url: str, stream: str) -> None:
    import nats
    with contextlib.suppress(Exception):
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()


class ChildBroker:
    """A broker process owned by the test, on a free port; stop() kills it, start() brings it
    back with the same storage directory."""

    def __init__(self, argv_for_port):
        self.port = services.free_port()
        self.argv = argv_for_port(self.port)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not services._reachable("127.0.0.1", self.port):
            assert self.proc.poll() is None, f"{self.argv[0]} exited"
            assert time.monotonic() < deadline, f"{self.argv[0]} did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


# -- NATS JetStream --------------------------------------------------------------------------
async def test_nats_sink_publishes_to_jetstream_with_event_ids(tmp_path):
    services.need("nats")
    name = services.unique("VBGWT")
    cfg = nats_cfg(tmp_path, services.NATS_URL, name)
    events = [enrolment("d-0"), verification(1), verification(2)]
    try:
        sink = build_sink(cfg)
        assert isinstance(sink, NatsSink)
        async with sink:
            for e in events:
                await sink.publish(e)
            await wait_for(lambda: sink.delivered == 3)
            await sink.publish(events[1])     # a re-send of the same event (same id): JetStream drops it
            await wait_for(lambda: sink.delivered == 4)
        msgs = await jetstream_messages(services.NATS_URL, name)
        assert [m.subject for m in msgs] == [f"vbgwtest.{name}.vb_enrolment",
                                             f"vbgwtest.{name}.vb_verification", f"vbgwtest.{name}.vb_verification"]
        assert [json.loads(m.data) for m in msgs] == [e.model_dump(mode="json") for e in events]
        assert [m.headers["Nats-Msg-Id"] for m in msgs] == [event_id(e) for e in events]
        assert [m.headers["VBGW-Event"] for m in msgs] == ["vb_enrolment", "vb_verification", "vb_verification"]
        assert len({event_id(e) for e in events}) == 3
    finally:
        await delete_stream(services.NATS_URL, name)


async def test_nats_down_events_wait_on_disk_and_arrive_after_it_returns(tmp_path):
    binary = services.need_binary("nats-server", "the NATS outage test runs its own server")
    store_dir = tmp_path / "js"
    broker = ChildBroker(lambda port: [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)])
    url = f"nats://127.0.0.1:{broker.port}"
    cfg = nats_cfg(tmp_path, url, "VBGW_OUTAGE")
    events = [verification(i) for i in range(1, 6)]
    try:
        # NATS down from the start: publish returns once the event is on disk
        sink = NatsSink(cfg)
        await sink.start()
        for e in events[:3]:
            await sink.publish(e)
        assert await sink.pending() == 3
        await wait_for(lambda: sink.failed_attempts >= 2)
        await sink.close()                                   # the gateway restarts meanwhile
        assert sink.delivered == 0

        await asyncio.to_thread(broker.start)
        sink = NatsSink(cfg)
        await sink.start()
        await wait_for(lambda: sink.delivered == 3)
        # NATS goes away again mid-run, events keep queueing, then it comes back
        await asyncio.to_thread(broker.stop)
        for e in events[3:]:
            await sink.publish(e)
        await wait_for(lambda: sink.failed_attempts >= 1)
        assert await sink.pending() == 2
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: sink.delivered == 5)
        assert await sink.pending() == 0
        await sink.close()

        msgs = await jetstream_messages(url, "VBGW_OUTAGE")
        assert [json.loads(m.data)["verification_id"] for m in msgs] == [1, 2, 3, 4, 5]   # in order, once
        assert [m.headers["Nats-Msg-Id"] for m in msgs] == [event_id(e) for e in events]
    finally:
        await asyncio.to_thread(broker.stop)


# -- Redis Streams ---------------------------------------------------------------------------
async def _redis_entries(url: str, stream: str) -> list[dict]:
    import redis.asyncio as aioredis
    r = aioredis.from_url(url)
    try:
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in await r.xrange(stream)]
    finally:
        await r.aclose()


async def _redis_cleanup(url: str, stream: str) -> None:
    import redis.asyncio as aioredis
    r = aioredis.from_url(url)
    try:
        keys = [k async for k in r.scan_iter(match=f"{stream}*")]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


async def test_redis_sink_adds_each_event_once_with_its_id(tmp_path):
    services.need("redis")
    stream = services.unique("vbgwtest:events")
    events = [enrolment("d-0"), verification(1)]
    try:
        sink = build_sink(redis_cfg(tmp_path, services.REDIS_URL, stream))
        assert isinstance(sink, RedisStreamSink)
        async with sink:
            for e in events:
                await sink.publish(e)
            await wait_for(lambda: sink.delivered == 2)
            await sink.publish(events[0])        # re-sent after delivery: the script adds nothing
            await wait_for(lambda: sink.delivered == 3)
        entries = await _redis_entries(services.REDIS_URL, stream)
        assert [e["event_id"] for e in entries] == [event_id(e) for e in events]
        assert [e["message_type"] for e in entries] == ["vb_enrolment", "vb_verification"]
        assert [json.loads(e["body"]) for e in entries] == [e.model_dump(mode="json") for e in events]
    finally:
        await _redis_cleanup(services.REDIS_URL, stream)


async def test_redis_down_events_wait_on_disk_and_arrive_after_it_returns(tmp_path):
    binary = services.need_binary("redis-server", "the Redis outage test runs its own server")
    broker = ChildBroker(lambda port: [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(tmp_path)])
    url = f"redis://127.0.0.1:{broker.port}/0"
    cfg = redis_cfg(tmp_path, url, "vbgw:events")
    try:
        sink = RedisStreamSink(cfg)
        await sink.start()
        for i in (1, 2, 3):
            await sink.publish(verification(i))
        await wait_for(lambda: sink.failed_attempts >= 2)
        assert await sink.pending() == 3 and sink.delivered == 0
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: sink.delivered == 3)
        await sink.close()
        entries = await _redis_entries(url, "vbgw:events")
        assert [json.loads(e["body"])["verification_id"] for e in entries] == [1, 2, 3]
    finally:
        await asyncio.to_thread(broker.stop)


def test_config_rejects_shared_outboxes_and_bad_urls(tmp_path):
    with pytest.raises(ValueError, match="own outbox"):
        EventsConfig(sinks=["nats", "redis"], nats_outbox_path=tmp_path / "o", redis_outbox_path=tmp_path / "o")
    with pytest.raises(ValueError, match="nats_url"):
        EventsConfig(sinks=["nats"], nats_url="http://x")
