"""Where ``vb_enrolment`` / ``vb_verification`` events (gateway/events/models.py) go: the sinks.

Sinks:

* :class:`JsonlSink` appends one JSON line per event (flush + fsync, off the loop).
* :class:`WebhookSink` commits each event to a SQLite (WAL) outbox before ``publish``
  returns, then a background task POSTs the outbox in order with an HMAC-SHA256
  signature, retrying with capped, jittered exponential backoff. At-least-once, ordered,
  durable across restarts.
* :class:`NatsSink` (JetStream) and :class:`RedisStreamSink` (Redis Streams) share the
  webhook's outbox machinery (:class:`OutboxSink`): committed to disk before ``publish``
  returns, delivered in order, at least once, each message carrying the event's id
  (:func:`event_id`) for de-duplication in a header / stream field, never in the event JSON.
* :class:`MultiSink` fans out; :func:`build_sink` builds the configured sink.

Nothing here logs a secret or a biokey value: log lines carry event ids, outbox ids,
delivery ids, status codes and attempt counts only.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.events.models import EVENT_TYPES  # noqa: F401 - re-exported for receivers
from gateway.infra.clock import now_ms
from gateway.infra.files import open_private, prepare_sqlite

log = structlog.get_logger(__name__)

__all__ = [
    "EventSink",
    "EventsConfig",
    "JsonlSink",
    "MultiSink",
    "NatsSink",
    "OutboxSink",
    "RedisStreamSink",
    "WebhookSink",
    "build_sink",
    "event_id",
    "sign",
    "verify_signature",
]


def _event_body(event: BaseModel) -> str:
    """Canonical wire body: the model's JSON (compact, key order as in the seed)."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)


def _event_type(event: BaseModel) -> str:
    return str(getattr(event, "message_type", type(event).__name__))


_EVENT_ID_NAMESPACE = uuid.UUID("6f1c2b8e-3d5a-4c1e-9a47-0b1e5f0c9d21")


def body_event_id(body: str) -> str:
    """The event id of a canonical event body (see :func:`event_id`)."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, body))


def event_id(event: BaseModel) -> str:
    """An event's id for de-duplication: a UUID derived from its canonical JSON body, so every
    sink (and every re-send) gives one event the same id without adding a field to the seed's
    event schema. Distinct events differ in their body (``verification_id`` / ``voiceprint_id``
    and timestamps), so they get distinct ids."""
    return body_event_id(_event_body(event))


def _event_ref(event: BaseModel) -> dict[str, Any]:
    """Loggable identifiers of an event (no personal data)."""
    ref: dict[str, Any] = {"message_type": _event_type(event)}
    for name in ("dialog_id", "verification_id"):
        if hasattr(event, name):
            ref[name] = getattr(event, name)
    return ref


# --------------------------------------------------------------------------- config


SinkName = Literal["jsonl", "webhook", "nats", "redis"]


def _default_sinks() -> list[SinkName]:
    return ["jsonl"]


class EventsConfig(BaseModel):
    """The ``events:`` section of the gateway config."""

    model_config = ConfigDict(extra="forbid")

    sinks: list[SinkName] = Field(default_factory=_default_sinks)
    jsonl_path: Path = Path("events.jsonl")         # relative: under server.data_dir
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    outbox_path: Path = Path("outbox.sqlite3")      # relative: under server.data_dir
    max_attempts: int = Field(default=0, ge=0)  # 0 = retry forever
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    region: str = "local"
    vb_version: str = "6.8.0"
    # NATS JetStream sink ("nats" in sinks)
    nats_url: str = "nats://127.0.0.1:4222"
    nats_stream: str = Field(default="VBGW_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    nats_subject_prefix: str = Field(default="vbgw.events", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    nats_create_stream: bool = True
    nats_outbox_path: Path = Path("outbox-nats.sqlite3")   # relative: under server.data_dir
    # Redis Streams sink ("redis" in sinks)
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_stream: str = Field(default="vbgw:events", min_length=1)
    redis_maxlen: int = Field(default=1_000_000, ge=0)       # approximate trim; 0 = keep everything
    redis_dedup_ttl_s: int = Field(default=86_400, ge=1)
    redis_outbox_path: Path = Path("outbox-redis.sqlite3")  # relative: under server.data_dir

    @model_validator(mode="after")
    def _check(self) -> EventsConfig:
        self.sinks = list(dict.fromkeys(self.sinks))  # dedupe, keep order
        if "webhook" in self.sinks:
            if not self.webhook_url:
                raise ValueError(
                    "events.webhook_url is required when 'webhook' is in events.sinks"
                )
            if not self.webhook_url.startswith(("http://", "https://")):
                raise ValueError("events.webhook_url must be an http:// or https:// URL")
            if self.webhook_secret is None or not self.webhook_secret.get_secret_value():
                raise ValueError(
                    "events.webhook_secret is required when 'webhook' is in events.sinks"
                )
        if "nats" in self.sinks and not self.nats_url.startswith(("nats://", "tls://")):
            raise ValueError("events.nats_url must be a nats:// or tls:// URL")
        if "redis" in self.sinks and not self.redis_url.get_secret_value().startswith(
                ("redis://", "rediss://", "unix://")):
            raise ValueError("events.redis_url must be a redis://, rediss:// or unix:// URL")
        outboxes = [p for name, p in (("webhook", self.outbox_path), ("nats", self.nats_outbox_path),
                                      ("redis", self.redis_outbox_path)) if name in self.sinks]
        if len(set(outboxes)) != len(outboxes):
            raise ValueError("each durable sink needs its own outbox file")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("events.backoff_max_s must be >= events.backoff_initial_s")
        return self


# --------------------------------------------------------------------------- signing


def _secret_bytes(secret: str | bytes | SecretStr) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def _as_bytes(body: str | bytes) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def sign(secret: str | bytes | SecretStr, timestamp: int | str, body: str | bytes) -> str:
    """``X-VBGW-Signature`` value: ``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``."""
    msg = str(timestamp).encode() + b"." + _as_bytes(body)
    return "sha256=" + hmac.new(_secret_bytes(secret), msg, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes | SecretStr,
    timestamp: int | str,
    body: str | bytes,
    header: str | None,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """Receiver-side check of ``X-VBGW-Signature`` (constant-time) and timestamp freshness.

    ``timestamp`` is the ``X-VBGW-Timestamp`` header (unix seconds), ``body`` the raw request
    body exactly as received. Returns False for a malformed/missing header, a timestamp more
    than ``tolerance_s`` away from now (replay protection), or a signature mismatch.
    """
    if not header or not header.startswith("sha256="):
        return False
    try:
        ts = int(str(timestamp).strip())
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    return hmac.compare_digest(expected.encode(), header.strip().encode())


# --------------------------------------------------------------------------- sinks


class EventSink(abc.ABC):
    """Where events go. ``publish`` returns once the event is durably accepted by the sink."""

    delivered: int = 0
    failed_attempts: int = 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open resources / start background work. Idempotent."""

    @abc.abstractmethod
    async def publish(self, event: BaseModel) -> None:
        """Accept one event."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and release resources. Idempotent."""

    async def pending(self) -> int:
        """Events accepted but not yet delivered (outbox depth)."""
        return 0

    async def __aenter__(self) -> EventSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class JsonlSink(EventSink):
    """Append one JSON line per event to ``path`` (flush + fsync; writes off the event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.delivered = 0
        self.failed_attempts = 0
        self._fh: Any = None
        self._lock = asyncio.Lock()  # one write at a time: lines never interleave

    def _open(self) -> None:
        if self._fh is None:
            self._fh = open_private(self.path, "a")   # 0600: events carry biokeys (docs/security.md)

    def _write(self, line: str) -> None:
        self._open()
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def start(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._open)

    async def publish(self, event: BaseModel) -> None:
        line = _event_body(event) + "\n"
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, line)
            except Exception:
                self.failed_attempts += 1
                log.error("events.jsonl.write_failed", path=str(self.path), **_event_ref(event))
                raise
        self.delivered += 1

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._close)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT    NOT NULL UNIQUE,
    message_type TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    created_ms   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    status       TEXT    NOT NULL DEFAULT 'pending',   -- pending | dead
    last_status  INTEGER,
    last_attempt_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_status_id ON outbox (status, id);
"""


class _Outbox:
    """Blocking SQLite outbox; every method is called via ``asyncio.to_thread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        prepare_sqlite(path)          # 0600, and so its -wal and -shm (gateway/infra/files.py)
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            self._db.execute("PRAGMA secure_delete=ON")  # a delivered event's biokeys do not linger
            self._db.executescript(_SCHEMA)

    def add(self, delivery_id: str, message_type: str, body: str) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (delivery_id, message_type, body, created_ms) "
                "VALUES (?, ?, ?, ?)",
                (delivery_id, message_type, body, now_ms()),
            )
            return int(cur.lastrowid or 0)       # 0: a known delivery id, ignored (was int(None): TypeError)

    def head(self) -> tuple[int, str, str, str, int] | None:
        with self._lock:
            return self._db.execute(
                "SELECT id, delivery_id, message_type, body, attempts FROM outbox "
                "WHERE status = 'pending' ORDER BY id LIMIT 1"
            ).fetchone()

    def delete(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def record_failure(self, row_id: int, status: int | None, dead: bool) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_status = ?, "
                "last_attempt_ms = ?, status = ? WHERE id = ?",
                (status, now_ms(), "dead" if dead else "pending", row_id),
            )

    def count(self, status: str) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE status = ?", (status,)
                ).fetchone()[0]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class OutboxSink(EventSink):
    """A sink that commits each event to its own SQLite (WAL) outbox before ``publish``
    returns, then delivers the outbox in order from one background task, retrying with capped,
    jittered exponential backoff: at-least-once, ordered, durable across restarts and outages.

    Subclasses say how one event is delivered (``_send``) and what a delivery id is. With
    ``max_attempts > 0`` an event that exhausts its attempts is parked as ``dead`` in the outbox
    (never deleted) and delivery moves on. This is the seam a Kafka sink would use too: it
    implements ``_send`` (produce with the event id as the message key and a header, wait for
    the broker's acknowledgement) and inherits the outbox (docs/events.md)."""

    kind = "outbox"          # names the sink in log events: events.<kind>.delivered, ...

    def __init__(self, cfg: EventsConfig, outbox_path: Path) -> None:
        self.cfg = cfg
        self.outbox_path = Path(outbox_path)
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0
        self._outbox: _Outbox | None = None
        self._open_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    # -- what a subclass provides -------------------------------------------------------------
    def _delivery_id(self, event: BaseModel) -> str:
        """The id kept with the event through every retry (receivers dedupe on it)."""
        return event_id(event)

    async def _open_channel(self) -> None:  # noqa: B027 - optional hook
        """Prepare what ``_send`` needs (a client session). Called from ``start``."""

    @abc.abstractmethod
    async def _send(self, delivery_id: str, message_type: str, body: str) -> tuple[bool, int | None]:
        """One delivery attempt: (accepted by the receiver, a status code to log if any).
        Connection errors are caught here and reported as (False, None)."""

    async def _close_channel(self) -> None:  # noqa: B027 - optional hook
        """Release what ``_open_channel`` made."""

    # -- the outbox and its delivery task ----------------------------------------------------
    async def _db(self) -> _Outbox:
        if self._outbox is None:
            async with self._open_lock:
                if self._outbox is None:
                    self._outbox = await asyncio.to_thread(_Outbox, self.outbox_path)
        return self._outbox

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        await self._db()
        self._stopping.clear()
        await self._open_channel()
        self._wake.set()  # deliver whatever a previous run left behind
        self._task = asyncio.create_task(self._run(), name=f"vbgw-{self.kind}-delivery")
        log.info(f"events.{self.kind}.started", pending=await self.pending())

    async def publish(self, event: BaseModel) -> None:
        db = await self._db()
        delivery_id = self._delivery_id(event)
        row_id = await asyncio.to_thread(db.add, delivery_id, _event_type(event), _event_body(event))
        log.debug(f"events.{self.kind}.queued", outbox_id=row_id, delivery_id=delivery_id, **_event_ref(event))
        self._wake.set()

    async def pending(self) -> int:
        db = await self._db()
        return await asyncio.to_thread(db.count, "pending")

    async def dead_letters(self) -> int:
        db = await self._db()
        return await asyncio.to_thread(db.count, "dead")

    def _backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): capped exponential, jittered."""
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * (2 ** min(attempt - 1, 32)))
        return random.uniform(base / 2, base)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but return early when stopping."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _run(self) -> None:
        db = await self._db()
        consecutive_errors = 0
        while not self._stopping.is_set():
            try:
                self._wake.clear()  # clear before reading: a publish after this re-sets it
                row = await asyncio.to_thread(db.head)
                if row is None:
                    waiter = asyncio.create_task(self._wake.wait())
                    stopper = asyncio.create_task(self._stopping.wait())
                    try:
                        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopper.cancel()
                    continue
                row_id, delivery_id, message_type, body, attempts = row
                ok, status = await self._send(delivery_id, message_type, body)
                attempt = attempts + 1
                consecutive_errors = 0
                if ok:
                    await asyncio.to_thread(db.delete, row_id)
                    self.delivered += 1
                    log.info(
                        f"events.{self.kind}.delivered",
                        outbox_id=row_id, delivery_id=delivery_id, status=status, attempt=attempt,
                    )
                    continue
                self.failed_attempts += 1
                dead = self.cfg.max_attempts > 0 and attempt >= self.cfg.max_attempts
                await asyncio.to_thread(db.record_failure, row_id, status, dead)
                if dead:
                    self.dead += 1
                    log.error(
                        f"events.{self.kind}.dead_letter",
                        outbox_id=row_id, delivery_id=delivery_id, status=status, attempt=attempt,
                    )
                    continue
                delay = self._backoff(attempt)
                log.warning(
                    f"events.{self.kind}.retry",
                    outbox_id=row_id, delivery_id=delivery_id, status=status,
                    attempt=attempt, retry_in_s=round(delay, 3),
                )
                await self._sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. sqlite trouble: never let the task die
                consecutive_errors += 1
                log.error(f"events.{self.kind}.loop_error", error=type(exc).__name__)
                await self._sleep(self._backoff(consecutive_errors))

    async def close(self, timeout: float | None = None) -> None:
        """Stop the delivery task (bounded wait, then cancel) and release resources.

        An event whose delivery is interrupted stays in the outbox and is re-sent on the next
        start (at-least-once: receivers dedupe on the delivery id).
        """
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            wait = self.cfg.timeout_s + 1.0 if timeout is None else timeout
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=wait)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self._close_channel()
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            await asyncio.to_thread(outbox.close)
        log.info(f"events.{self.kind}.closed", delivered=self.delivered, failed_attempts=self.failed_attempts)


class WebhookSink(OutboxSink):
    """POST events to ``cfg.webhook_url`` through a durable, ordered SQLite outbox.

    ``publish`` commits the event to the outbox before returning. A single delivery task
    sends the oldest pending event, deletes it on a 2xx, and otherwise retries it (same
    ``X-VBGW-Delivery`` id) with capped, jittered exponential backoff; later events wait
    behind it, so delivery is in order. Each request also carries ``X-VBGW-Event-Id``, the
    event's id (the same in every sink). With ``max_attempts > 0`` an event that exhausts its
    attempts is parked as ``dead`` in the outbox (never deleted) and delivery moves on.
    """

    kind = "webhook"

    def __init__(self, cfg: EventsConfig) -> None:
        if not cfg.webhook_url or cfg.webhook_secret is None:
            raise ValueError("events.webhook_url and events.webhook_secret are required")
        super().__init__(cfg, Path(cfg.outbox_path))
        self.url = cfg.webhook_url
        self._secret = cfg.webhook_secret
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, outbox={str(self.cfg.outbox_path)!r})"

    def _delivery_id(self, event: BaseModel) -> str:
        return str(uuid.uuid4())

    async def _open_channel(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            )

    async def _close_channel(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, delivery_id: str, message_type: str, body: str) -> tuple[bool, int | None]:
        status = await self._post(delivery_id, message_type, body)
        return status is not None and 200 <= status < 300, status

    async def _post(self, delivery_id: str, message_type: str, body: str) -> int | None:
        """One attempt. Returns the HTTP status, or None on a connection error/timeout."""
        assert self._session is not None
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-VBGW-Event": message_type,
            "X-VBGW-Delivery": delivery_id,
            "X-VBGW-Event-Id": body_event_id(body),
            "X-VBGW-Timestamp": str(ts),
            "X-VBGW-Signature": sign(self._secret, ts, body),
        }
        try:
            async with self._session.post(self.url, data=body.encode(), headers=headers) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("events.webhook.connect_error", delivery_id=delivery_id, error=type(exc).__name__)
            return None


class NatsSink(OutboxSink):
    """Events to NATS JetStream (subject ``<nats_subject_prefix>.<message_type>``), through a
    durable outbox: when NATS is down, events wait on disk and go out in order once it is back.

    An event counts as delivered only when JetStream acknowledged storing it. Each message
    carries the header ``Nats-Msg-Id: <event id>``, so JetStream itself drops a re-send of the
    same event inside its duplicate window (a retry after a lost acknowledgement), and consumers
    can dedupe on it beyond that window; ``VBGW-Event`` names the message type. The message
    body is the event JSON, unchanged. The client library (nats-py) is imported on start only."""

    kind = "nats"

    def __init__(self, cfg: EventsConfig) -> None:
        super().__init__(cfg, Path(cfg.nats_outbox_path))
        self._nc: Any = None
        self._js: Any = None
        self._stream_ready = False

    def __repr__(self) -> str:
        return f"NatsSink(stream={self.cfg.nats_stream!r}, outbox={str(self.cfg.nats_outbox_path)!r})"

    async def _connect(self) -> Any:
        if self._nc is not None and self._nc.is_connected:
            return self._js
        import nats

        async def quiet(*args: Any) -> None:      # connection trouble is reported per attempt
            return None

        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        # No reconnecting inside the client: a lost connection fails the attempt in hand, and
        # the outbox's own backoff decides when to connect again (one retry policy, not two).
        self._nc = await nats.connect(
            # nats-py's first connect loops over its pool until a server exceeds
            # max_reconnect_attempts (0 would mean forever): 1 makes it give up after two tries.
            servers=[self.cfg.nats_url], connect_timeout=self.cfg.timeout_s, allow_reconnect=False,
            max_reconnect_attempts=1, reconnect_time_wait=0.05,
            error_cb=quiet, disconnected_cb=quiet, closed_cb=quiet,
        )
        self._js = self._nc.jetstream(timeout=self.cfg.timeout_s)
        if self.cfg.nats_create_stream and not self._stream_ready:
            from nats.js.errors import NotFoundError
            subjects = [f"{self.cfg.nats_subject_prefix}.>"]
            try:
                await self._js.stream_info(self.cfg.nats_stream)
            except NotFoundError:
                await self._js.add_stream(name=self.cfg.nats_stream, subjects=subjects)
                log.info("events.nats.stream_created", stream=self.cfg.nats_stream, subjects=subjects)
            self._stream_ready = True
        return self._js

    async def _send(self, delivery_id: str, message_type: str, body: str) -> tuple[bool, int | None]:
        try:
            js = await self._connect()
            ack = await js.publish(
                f"{self.cfg.nats_subject_prefix}.{message_type}", body.encode(),
                timeout=self.cfg.timeout_s, stream=self.cfg.nats_stream,
                headers={"Nats-Msg-Id": delivery_id, "VBGW-Event": message_type},
            )
        except Exception as exc:  # noqa: BLE001 - nats-py raises its own types for every failure; all mean "not stored"
            log.warning("events.nats.publish_error", delivery_id=delivery_id, error=type(exc).__name__)
            return False, None
        return ack.stream == self.cfg.nats_stream, None

    async def _close_channel(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()


# XADD only if this event id was not added within the dedup window: a re-send after a lost
# reply adds nothing. Consumers can also dedupe on the entry's event_id field.
_REDIS_XADD_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  if tonumber(ARGV[2]) > 0 then
    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
                      'event_id', ARGV[3], 'message_type', ARGV[4], 'body', ARGV[5])
  end
  return redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[3], 'message_type', ARGV[4], 'body', ARGV[5])
end
return false
"""


class RedisStreamSink(OutboxSink):
    """Events to a Redis Stream (``XADD <redis_stream>`` with fields ``event_id``,
    ``message_type`` and ``body``, the event JSON unchanged), through a durable outbox like the
    other sinks. A script adds an event id at most once per ``redis_dedup_ttl_s``. How durable
    the stream itself is depends on the Redis server's persistence (AOF); see docs/events.md.
    The client library (redis-py) is imported on start only."""

    kind = "redis"

    def __init__(self, cfg: EventsConfig) -> None:
        super().__init__(cfg, Path(cfg.redis_outbox_path))
        self._client: Any = None
        self._script: Any = None

    def __repr__(self) -> str:
        return f"RedisStreamSink(stream={self.cfg.redis_stream!r}, outbox={str(self.cfg.redis_outbox_path)!r})"

    async def _open_channel(self) -> None:
        if self._client is None:
            import redis.asyncio as aioredis
            self._client = aioredis.from_url(
                self.cfg.redis_url.get_secret_value(), socket_timeout=self.cfg.timeout_s,
                socket_connect_timeout=self.cfg.timeout_s)
            self._script = self._client.register_script(_REDIS_XADD_ONCE)

    async def _send(self, delivery_id: str, message_type: str, body: str) -> tuple[bool, int | None]:
        stream = self.cfg.redis_stream
        try:
            await self._script(keys=[stream, f"{stream}:seen:{delivery_id}"],
                               args=[self.cfg.redis_dedup_ttl_s, self.cfg.redis_maxlen, delivery_id,
                                     message_type, body])
        except Exception as exc:  # noqa: BLE001 - redis-py's ConnectionError/TimeoutError and server errors
            log.warning("events.redis.xadd_error", delivery_id=delivery_id, error=type(exc).__name__)
            return False, None
        return True, None

    async def _close_channel(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class MultiSink(EventSink):
    """Fan an event out to several sinks. ``publish`` raises if any sink failed (after trying all)."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = list(sinks)

    @property
    def delivered(self) -> int:  # type: ignore[override]  # a sum of its sinks', not a counter of its own
        return sum(s.delivered for s in self.sinks)

    @property
    def failed_attempts(self) -> int:  # type: ignore[override]
        return sum(s.failed_attempts for s in self.sinks)

    async def start(self) -> None:
        for s in self.sinks:
            await s.start()

    async def publish(self, event: BaseModel) -> None:
        results = await asyncio.gather(*(s.publish(event) for s in self.sinks), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            log.error("events.multi.publish_failed", failed=len(errors), **_event_ref(event))
            raise errors[0]

    async def pending(self) -> int:
        return sum([await s.pending() for s in self.sinks])

    async def close(self) -> None:
        for s in self.sinks:
            with contextlib.suppress(Exception):
                await s.close()


def build_sink(cfg: EventsConfig) -> EventSink:
    """The sink described by ``cfg`` (a single sink, or a MultiSink for several)."""
    sinks: list[EventSink] = []
    for name in cfg.sinks:
        if name == "jsonl":
            sinks.append(JsonlSink(cfg.jsonl_path))
        elif name == "webhook":
            sinks.append(WebhookSink(cfg))
        elif name == "nats":
            sinks.append(NatsSink(cfg))
        elif name == "redis":
            sinks.append(RedisStreamSink(cfg))
    if len(sinks) == 1:
        return sinks[0]
    return MultiSink(sinks)
