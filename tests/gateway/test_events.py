"""Events: seed-exact models, JSONL sink, durable signed webhook outbox (real sockets)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from pathlib import Path

import pydantic
import pytest
from aiohttp import web

from gateway.events.models import (
    Biokey,
    EnrolledUser,
    VbEnrolmentEvent,
    VbVerificationEvent,
    VerificationEnrolledUser,
    VerificationResult,
    VoiceprintBlock,
)
from gateway.events.sinks import (
    EventsConfig,
    JsonlSink,
    MultiSink,
    WebhookSink,
    build_sink,
    sign,
    verify_signature,
)
from gateway.infra.clock import now_ms

SECRET = "s3cr3t-for-tests"

# Example JSONs copied from the seed (ocp-vb-event-schemas). The seed's enrolment example
# has typographic quotes around 6.8.0; straightened here so it parses.
SEED_ENROLMENT = json.loads("""
{
  "message_type": "vb_enrolment",
  "region": "test-region",
  "vb_version": "6.8.0",
  "dialog_id": "abcd",
  "session_id": "efg",
  "origin": "",
  "group_name": "",
  "enrolled_user": {
    "user_id": "",
    "organization_name": "",
    "user_creation_ts": "",
    "opted_out": "",
    "optout_ts": "",
    "optin_ts": ""
  },
  "biokeys": [
      {
        "key": "ani",
        "value": "12345"
      }
    ],
  "profile_id": "",
  "voiceprint":
    {
      "voiceprint_id": "",
      "creation_ts": "",
      "extractor_version": "",
      "method": "",
      "model": "",
      "plda_version": "",
      "speech_frames": "",
      "sw_version": "",
      "vp_fail": "",
      "vp_fail_reason": ""
    }
}
""")

SEED_VERIFICATION = json.loads("""
{
  "message_type": "vb_verification",
  "vb_version": "6.7.0",
  "dialog_id": "12345",
  "dialog_step": 7,
  "enrolled_user": {
    "user_id": "",
    "organization_name": ""
  },
  "group_name": "DEF",
  "voiceprint_ids": [
    null
  ],
  "profile_id": "DEF",
  "verification_id": 8,
  "extractor_version": "1.0.3",
  "frame_count": 444,
  "llr": 0.0001,
  "method": "man",
  "model": "aadfadf",
  "llr_norm": 0.4,
  "plda_version": "34.333.22",
  "verification_score": 0.13,
  "sw_version": "1.0.0-blsfadf",
  "verification_ts": 1552639569000,
  "user_changed": false,
  "verification_result": "FALSE_HIGH",
  "fail_reason": null,
  "scd_llr": null,
  "scd_nllr": null,
  "verification_origin": null,
  "non_target": true
}
""")

SEED_RESULTS = [
    "NO_DATA", "LOW_DATA", "NOT_SCORED", "OK_TMP", "FALSE_HIGH", "FALSE_MEDIUM",
    "FALSE_LOW", "TRUE_HIGH", "TRUE_MEDIUM", "TRUE_LOW", "ERROR",
]


def enrolment(dialog_id: str = "d-1") -> VbEnrolmentEvent:
    return VbEnrolmentEvent(
        region="test-region",
        dialog_id=dialog_id,
        session_id="s-1",
        origin="IVR",
        group_name="G",
        enrolled_user=EnrolledUser(
            user_id="u-1", organization_name="O", user_creation_ts=now_ms(),
            opted_out=False, optout_ts=None, optin_ts=now_ms(),
        ),
        biokeys=[Biokey(key="ani", value="12345")],
        profile_id="p-1",
        voiceprint=VoiceprintBlock(
            voiceprint_id=42, creation_ts=now_ms(), extractor_version="x1", method="m",
            model="ecapa", plda_version="p1", speech_frames=1234, sw_version="0.1.0",
            vp_fail=False, vp_fail_reason=None,
        ),
    )


def verification(n: int) -> VbVerificationEvent:
    return VbVerificationEvent(
        dialog_id=f"d-{n}", dialog_step=n, group_name="G",
        enrolled_user=VerificationEnrolledUser(user_id="u-1", organization_name="O"),
        voiceprint_ids=[42], profile_id="p-1", verification_id=n, frame_count=444,
        llr=0.1, llr_norm=0.4, verification_score=0.93, verification_ts=now_ms(),
        verification_result=VerificationResult.TRUE_HIGH,
    )


def keys(d: object, prefix: str = "") -> set[str]:
    """Nested key paths of a JSON value (list items merged under '[]')."""
    out: set[str] = set()
    if isinstance(d, dict):
        for k, v in d.items():
            out.add(prefix + k)
            out |= keys(v, prefix + k + ".")
    elif isinstance(d, list):
        for item in d:
            out |= keys(item, prefix + "[].")
    return out


# ------------------------------------------------------------------ models


def test_enrolment_matches_seed_keys_and_types() -> None:
    dumped = enrolment().model_dump(mode="json")
    assert keys(dumped) == keys(SEED_ENROLMENT)
    assert list(dumped) == list(SEED_ENROLMENT)  # same order too
    vp = dumped["voiceprint"]
    assert isinstance(vp["voiceprint_id"], int) and isinstance(vp["speech_frames"], int)
    assert vp["vp_fail"] is False and vp["vp_fail_reason"] is None
    assert isinstance(dumped["enrolled_user"]["opted_out"], bool)
    assert isinstance(dumped["enrolled_user"]["user_creation_ts"], int)
    assert dumped["biokeys"] == [{"key": "ani", "value": "12345"}]
    assert "12345" not in repr(enrolment().biokeys[0])


def test_verification_matches_seed_keys() -> None:
    dumped = verification(1).model_dump(mode="json")
    # The seed's table lists `region`; its example JSON omits it. We follow the table.
    assert keys(dumped) == keys(SEED_VERIFICATION) | {"region"}
    assert dumped["verification_result"] == "TRUE_HIGH"
    assert dumped["fail_reason"] == "OK"  # seed table: "If no failure, then the value is OK"
    assert isinstance(dumped["verification_ts"], int)
    assert dumped["voiceprint_ids"] == [42]
    # The seed example (plus region) validates and round-trips.
    ex = VbVerificationEvent.model_validate({**SEED_VERIFICATION, "voiceprint_ids": [1]})
    assert ex.model_dump(mode="json") == {**SEED_VERIFICATION, "voiceprint_ids": [1], "region": "local"}


def test_verification_result_enumeration_and_strictness() -> None:
    assert [r.value for r in VerificationResult] == SEED_RESULTS
    with pytest.raises(pydantic.ValidationError):
        VbVerificationEvent.model_validate({**verification(1).model_dump(), "verification_result": "MAYBE"})
    with pytest.raises(pydantic.ValidationError):
        VbVerificationEvent.model_validate({**verification(1).model_dump(), "extra_key": 1})
    with pytest.raises(pydantic.ValidationError):
        VbEnrolmentEvent.model_validate({**enrolment().model_dump(), "message_type": "vb_verification"})


# ------------------------------------------------------------------ config


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = EventsConfig()
    assert cfg.sinks == ["jsonl"] and cfg.max_attempts == 0 and cfg.vb_version == "6.8.0"
    with pytest.raises(pydantic.ValidationError, match=r"events\.webhook_url"):
        EventsConfig(sinks=["webhook"], webhook_secret="x")
    with pytest.raises(pydantic.ValidationError, match=r"events\.webhook_secret"):
        EventsConfig(sinks=["webhook"], webhook_url="http://127.0.0.1:1/")
    with pytest.raises(pydantic.ValidationError):
        EventsConfig(sinks=["kafka"])
    ok = EventsConfig(sinks=["jsonl", "webhook"], webhook_url="http://x/", webhook_secret=SECRET,
                      jsonl_path=tmp_path / "e.jsonl", outbox_path=tmp_path / "o.db")
    assert SECRET not in repr(ok) and SECRET not in str(ok.model_dump())
    sink = build_sink(ok)
    assert isinstance(sink, MultiSink)
    assert [type(s) for s in sink.sinks] == [JsonlSink, WebhookSink]
    assert isinstance(build_sink(EventsConfig(jsonl_path=tmp_path / "e.jsonl")), JsonlSink)


# ------------------------------------------------------------------ signatures


def test_verify_signature() -> None:
    body = verification(1).model_dump_json()
    ts = int(time.time())
    good = sign(SECRET, ts, body)
    assert verify_signature(SECRET, ts, body, good)
    assert verify_signature(SECRET, str(ts), body.encode(), good)
    assert not verify_signature("wrong", ts, body, good)
    assert not verify_signature(SECRET, ts, body + " ", good)  # tampered body
    assert not verify_signature(SECRET, ts, body, "sha256=" + "0" * 64)
    assert not verify_signature(SECRET, ts, body, good[7:])  # missing scheme
    assert not verify_signature(SECRET, ts, body, None)
    assert not verify_signature(SECRET, "nope", body, good)
    stale = ts - 301
    assert not verify_signature(SECRET, stale, body, sign(SECRET, stale, body))  # replay
    assert verify_signature(SECRET, stale, body, sign(SECRET, stale, body), tolerance_s=600)


# ------------------------------------------------------------------ jsonl


async def test_jsonl_sink_concurrent(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "events.jsonl"
    sink = JsonlSink(path)
    await sink.start()
    n = 200
    await asyncio.gather(*(sink.publish(verification(i)) for i in range(n)), sink.publish(enrolment()))
    await sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == n + 1 and sink.delivered == n + 1
    parsed = [json.loads(line) for line in lines]
    assert sorted(p["verification_id"] for p in parsed if p["message_type"] == "vb_verification") == list(range(n))
    assert sum(p["message_type"] == "vb_enrolment" for p in parsed) == 1
    # Appends across restarts.
    async with JsonlSink(path) as again:
        await again.publish(verification(999))
    assert len(path.read_text().splitlines()) == n + 2


# ------------------------------------------------------------------ webhook


class Receiver:
    """Local webhook receiver: first `fail_first` requests get 500, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.accepted: list[dict] = []
        self.bad_signatures = 0
        # Bound but not listening: connects are refused until start().
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        h = request.headers
        if not verify_signature(SECRET, h["X-VBGW-Timestamp"], body, h["X-VBGW-Signature"]):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.requests <= self.fail_first:
            return web.Response(status=500)
        self.accepted.append({
            "delivery": h["X-VBGW-Delivery"], "event": h["X-VBGW-Event"],
            "content_type": h["Content-Type"], "body": json.loads(body),
        })
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()


def webhook_cfg(tmp_path: Path, url: str, **kw) -> EventsConfig:
    return EventsConfig(
        sinks=["webhook"], webhook_url=url, webhook_secret=SECRET,
        outbox_path=tmp_path / "outbox.sqlite3", backoff_initial_s=0.02, backoff_max_s=0.1,
        timeout_s=2.0, **kw,
    )


async def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_webhook_outage_restart_exactly_once_in_order(tmp_path: Path) -> None:
    recv = Receiver(fail_first=3)
    cfg = webhook_cfg(tmp_path, recv.url)
    try:
        # Receiver down (connection refused): the event is durable before publish returns.
        sink1 = WebhookSink(cfg)
        await sink1.start()
        first = enrolment("d-0")
        await sink1.publish(first)
        assert await sink1.pending() == 1
        await wait_for(lambda: sink1.failed_attempts >= 2)
        await sink1.close()
        with contextlib.closing(sqlite3.connect(cfg.outbox_path)) as db:  # on disk after close
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        # Receiver up but failing its first 3 requests with 500; new sink on the same outbox.
        await recv.start()
        sink2 = WebhookSink(cfg)
        await sink2.start()
        for i in range(1, 6):
            await sink2.publish(verification(i))
        await wait_for(lambda: sink2.delivered == 6)  # receiver saw it AND outbox row deleted
        assert await sink2.pending() == 0
        await asyncio.sleep(0.1)  # nothing more arrives
        await sink2.close()

        assert recv.bad_signatures == 0
        assert recv.requests == 6 + 3 and sink2.failed_attempts == 3 and sink2.delivered == 6
        deliveries = [a["delivery"] for a in recv.accepted]
        assert len(set(deliveries)) == 6  # exactly once
        assert recv.accepted[0]["event"] == "vb_enrolment"
        assert recv.accepted[0]["body"]["dialog_id"] == "d-0"
        assert [a["body"]["verification_id"] for a in recv.accepted[1:]] == [1, 2, 3, 4, 5]
        assert all(a["event"] == a["body"]["message_type"] for a in recv.accepted)
        assert all(a["content_type"] == "application/json" for a in recv.accepted)
        assert recv.accepted[0]["body"] == first.model_dump(mode="json")
    finally:
        await recv.stop()


async def test_webhook_dead_letter_keeps_event_and_moves_on(tmp_path: Path) -> None:
    recv = Receiver(fail_first=2)
    await recv.start()
    try:
        sink = WebhookSink(webhook_cfg(tmp_path, recv.url, max_attempts=2))
        async with sink:
            await sink.publish(verification(1))  # gets 500, 500 -> dead
            await sink.publish(verification(2))  # delivered
            await wait_for(lambda: sink.delivered == 1)
            assert await sink.pending() == 0 and await sink.dead_letters() == 1
            assert sink.dead == 1
        assert [a["body"]["verification_id"] for a in recv.accepted] == [2]
    finally:
        await recv.stop()


async def test_webhook_close_is_bounded_and_loop_not_blocked(tmp_path: Path) -> None:
    # Receiver that hangs: close() must still return promptly, event kept for next run.
    hang = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await hang.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        sink = WebhookSink(webhook_cfg(tmp_path, f"http://127.0.0.1:{port}/hook"))
        await sink.start()
        await sink.publish(verification(1))
        ticks = 0
        for _ in range(10):  # the loop keeps running while the POST is in flight
            await asyncio.sleep(0.01)
            ticks += 1
        t0 = time.monotonic()
        await sink.close(timeout=0.3)
        assert time.monotonic() - t0 < 1.5 and ticks == 10
        again = WebhookSink(webhook_cfg(tmp_path, f"http://127.0.0.1:{port}/hook"))
        assert await again.pending() == 1
        await again.close()
    finally:
        hang.set()
        await runner.cleanup()


async def test_multisink_fanout(tmp_path: Path) -> None:
    recv = Receiver()
    await recv.start()
    try:
        cfg = webhook_cfg(tmp_path, recv.url).model_copy(
            update={"sinks": ["jsonl", "webhook"], "jsonl_path": tmp_path / "e.jsonl"}
        )
        sink = build_sink(cfg)
        async with sink:
            await sink.publish(verification(7))
            await wait_for(lambda: sink.delivered == 2)
            assert await sink.pending() == 0
        assert sink.delivered == 2
        assert json.loads((tmp_path / "e.jsonl").read_text())["verification_id"] == 7
    finally:
        await recv.stop()
