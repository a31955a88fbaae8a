"""OCP-style Voice Biometrics events (``vb_enrolment``, ``vb_verification``) and their sinks.

The event models follow the seed contract (``ocp-vb-event-schemas``) field for field:
``model_dump(mode="json")`` gives exactly the seed's JSON keys and nesting. Timestamps
are unix epoch milliseconds (ints).

Two decisions the seed leaves open, fixed here (see docs/events.md):

* ``fail_reason`` on ``vb_verification``: the seed's table says "If no failure, then the
  value is OK" while its example shows ``null``. We follow the table: the default and the
  value the gateway emits for a successful verification is ``"OK"``. The type still
  accepts ``None`` so events produced by other emitters parse.
* ``region`` on ``vb_verification``: listed in the seed's table but missing from its
  example JSON. We follow the table and always emit it.

Sinks:

* :class:`JsonlSink` appends one JSON line per event (flush + fsync, off the loop).
* :class:`WebhookSink` commits each event to a SQLite (WAL) outbox before ``publish``
  returns, then a background task POSTs the outbox in order with an HMAC-SHA256
  signature, retrying with capped, jittered exponential backoff. At-least-once, ordered,
  durable across restarts.
* :class:`MultiSink` fans out; :func:`build_sink` builds the configured sink.

Nothing here logs a secret or a biokey value: log lines carry event ids, outbox ids,
delivery ids, status codes and attempt counts only.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
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

from gateway.files import open_private, prepare_sqlite

log = structlog.get_logger(__name__)

__all__ = [
    "EVENT_TYPES",
    "Biokey",
    "EnrolledUser",
    "EventSink",
    "EventsConfig",
    "JsonlSink",
    "MultiSink",
    "VbEnrolmentEvent",
    "VbVerificationEvent",
    "VerificationEnrolledUser",
    "VerificationResult",
    "VoiceprintBlock",
    "WebhookSink",
    "build_sink",
    "now_ms",
    "sign",
    "verify_signature",
]


def now_ms() -> int:
    """Current time as unix epoch milliseconds (the unit of every ``*_ts`` field)."""
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- models

_STRICT = ConfigDict(extra="forbid")


class VerificationResult(str, enum.Enum):
    """The seed's ``verification_result`` enumeration."""

    NO_DATA = "NO_DATA"
    LOW_DATA = "LOW_DATA"
    NOT_SCORED = "NOT_SCORED"
    OK_TMP = "OK_TMP"
    FALSE_HIGH = "FALSE_HIGH"
    FALSE_MEDIUM = "FALSE_MEDIUM"
    FALSE_LOW = "FALSE_LOW"
    TRUE_HIGH = "TRUE_HIGH"
    TRUE_MEDIUM = "TRUE_MEDIUM"
    TRUE_LOW = "TRUE_LOW"
    ERROR = "ERROR"


class EnrolledUser(BaseModel):
    """``enrolled_user`` block of ``vb_enrolment``."""

    model_config = _STRICT

    user_id: str
    organization_name: str = ""
    user_creation_ts: int | None = None  # unix ms
    opted_out: bool = False
    optout_ts: int | None = None  # unix ms
    optin_ts: int | None = None  # unix ms


class Biokey(BaseModel):
    """One ``biokeys`` entry. ``value`` is personal data (e.g. an ANI): never log it."""

    model_config = _STRICT

    key: str
    value: str

    def __repr__(self) -> str:  # keep values out of accidental reprs/log lines
        return f"Biokey(key={self.key!r}, value=<redacted>)"

    __str__ = __repr__


class VoiceprintBlock(BaseModel):
    """``voiceprint`` block of ``vb_enrolment``."""

    model_config = _STRICT

    voiceprint_id: int | None  # null when the build failed (vp_fail): nothing was stored
    creation_ts: int  # unix ms
    extractor_version: str = ""
    method: str = ""
    model: str = ""
    plda_version: str = ""
    speech_frames: int = 0
    sw_version: str = ""
    vp_fail: bool = False
    vp_fail_reason: str | None = None  # null when the build succeeded


class VbEnrolmentEvent(BaseModel):
    """``vb_enrolment``: emitted after an enrolment (voiceprint build) is committed."""

    model_config = _STRICT

    message_type: Literal["vb_enrolment"] = "vb_enrolment"
    region: str = "local"
    vb_version: str = "6.8.0"
    dialog_id: str
    session_id: str = ""
    origin: str = ""
    group_name: str = ""
    enrolled_user: EnrolledUser
    biokeys: list[Biokey] = Field(default_factory=list)
    profile_id: str = ""
    voiceprint: VoiceprintBlock


class VerificationEnrolledUser(BaseModel):
    """``enrolled_user`` block of ``vb_verification`` (user_id and organization_name only)."""

    model_config = _STRICT

    user_id: str = ""
    organization_name: str = ""


class VbVerificationEvent(BaseModel):
    """``vb_verification``: emitted for each NORMAL result and each on-demand verification."""

    model_config = _STRICT

    message_type: Literal["vb_verification"] = "vb_verification"
    region: str = "local"
    vb_version: str = "6.8.0"
    dialog_id: str
    dialog_step: int = 0
    enrolled_user: VerificationEnrolledUser = Field(default_factory=VerificationEnrolledUser)
    group_name: str = ""
    voiceprint_ids: list[int] = Field(default_factory=list)
    profile_id: str = ""
    verification_id: int
    extractor_version: str = ""
    frame_count: int = 0
    llr: float | None = None
    method: str = ""
    model: str = ""
    llr_norm: float | None = None
    plda_version: str = ""
    verification_score: float | None = None
    sw_version: str = ""
    verification_ts: int  # unix ms
    user_changed: bool = False
    verification_result: VerificationResult
    # Seed table: "If no failure, then the value is OK" (the example's null is accepted too).
    fail_reason: str | None = "OK"
    scd_llr: float | None = None
    scd_nllr: float | None = None
    verification_origin: str | None = None
    non_target: bool = False


EVENT_TYPES: dict[str, type[BaseModel]] = {
    "vb_enrolment": VbEnrolmentEvent,
    "vb_verification": VbVerificationEvent,
}


def _event_body(event: BaseModel) -> str:
    """Canonical wire body: the model's JSON (compact, key order as in the seed)."""
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)


def _event_type(event: BaseModel) -> str:
    return str(getattr(event, "message_type", type(event).__name__))


def _event_ref(event: BaseModel) -> dict[str, Any]:
    """Loggable identifiers of an event (no personal data)."""
    ref: dict[str, Any] = {"message_type": _event_type(event)}
    for name in ("dialog_id", "verification_id"):
        if hasattr(event, name):
            ref[name] = getattr(event, name)
    return ref


# --------------------------------------------------------------------------- config


class EventsConfig(BaseModel):
    """The ``events:`` section of the gateway config."""

    model_config = ConfigDict(extra="forbid")

    sinks: list[Literal["jsonl", "webhook"]] = Field(default_factory=lambda: ["jsonl"])
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
        prepare_sqlite(path)          # 0600, and so its -wal and -shm (gateway/files.py)
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
                "INSERT INTO outbox (delivery_id, message_type, body, created_ms) "
                "VALUES (?, ?, ?, ?)",
                (delivery_id, message_type, body, now_ms()),
            )
            return int(cur.lastrowid)

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


class WebhookSink(EventSink):
    """POST events to ``cfg.webhook_url`` through a durable, ordered SQLite outbox.

    ``publish`` commits the event to the outbox before returning. A single delivery task
    sends the oldest pending event, deletes it on a 2xx, and otherwise retries it (same
    ``X-VBGW-Delivery`` id) with capped, jittered exponential backoff; later events wait
    behind it, so delivery is in order. With ``max_attempts > 0`` an event that exhausts its
    attempts is parked as ``dead`` in the outbox (never deleted) and delivery moves on.
    """

    def __init__(self, cfg: EventsConfig) -> None:
        if not cfg.webhook_url or cfg.webhook_secret is None:
            raise ValueError("events.webhook_url and events.webhook_secret are required")
        self.cfg = cfg
        self.url = cfg.webhook_url
        self._secret = cfg.webhook_secret
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0
        self._outbox: _Outbox | None = None
        self._open_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, outbox={str(self.cfg.outbox_path)!r})"

    async def _db(self) -> _Outbox:
        if self._outbox is None:
            async with self._open_lock:
                if self._outbox is None:
                    self._outbox = await asyncio.to_thread(_Outbox, Path(self.cfg.outbox_path))
        return self._outbox

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        await self._db()
        self._stopping.clear()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            )
        self._wake.set()  # deliver whatever a previous run left behind
        self._task = asyncio.create_task(self._run(), name="vbgw-webhook-delivery")
        log.info("events.webhook.started", pending=await self.pending())

    async def publish(self, event: BaseModel) -> None:
        db = await self._db()
        delivery_id = str(uuid.uuid4())
        row_id = await asyncio.to_thread(db.add, delivery_id, _event_type(event), _event_body(event))
        log.debug("events.webhook.queued", outbox_id=row_id, delivery_id=delivery_id, **_event_ref(event))
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

    async def _post(self, delivery_id: str, message_type: str, body: str) -> int | None:
        """One attempt. Returns the HTTP status, or None on a connection error/timeout."""
        assert self._session is not None
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-VBGW-Event": message_type,
            "X-VBGW-Delivery": delivery_id,
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
                status = await self._post(delivery_id, message_type, body)
                attempt = attempts + 1
                consecutive_errors = 0
                if status is not None and 200 <= status < 300:
                    await asyncio.to_thread(db.delete, row_id)
                    self.delivered += 1
                    log.info(
                        "events.webhook.delivered",
                        outbox_id=row_id, delivery_id=delivery_id, status=status, attempt=attempt,
                    )
                    continue
                self.failed_attempts += 1
                dead = self.cfg.max_attempts > 0 and attempt >= self.cfg.max_attempts
                await asyncio.to_thread(db.record_failure, row_id, status, dead)
                if dead:
                    self.dead += 1
                    log.error(
                        "events.webhook.dead_letter",
                        outbox_id=row_id, delivery_id=delivery_id, status=status, attempt=attempt,
                    )
                    continue
                delay = self._backoff(attempt)
                log.warning(
                    "events.webhook.retry",
                    outbox_id=row_id, delivery_id=delivery_id, status=status,
                    attempt=attempt, retry_in_s=round(delay, 3),
                )
                await self._sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. sqlite trouble: never let the task die
                consecutive_errors += 1
                log.error("events.webhook.loop_error", error=type(exc).__name__)
                await self._sleep(self._backoff(consecutive_errors))

    async def close(self, timeout: float | None = None) -> None:
        """Stop the delivery task (bounded wait, then cancel) and release resources.

        An event whose POST is interrupted stays in the outbox and is re-sent on the next
        start (at-least-once: receivers dedupe on ``X-VBGW-Delivery``).
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
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            await asyncio.to_thread(outbox.close)
        log.info("events.webhook.closed", delivered=self.delivered, failed_attempts=self.failed_attempts)


class MultiSink(EventSink):
    """Fan an event out to several sinks. ``publish`` raises if any sink failed (after trying all)."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = list(sinks)

    @property  # type: ignore[override]
    def delivered(self) -> int:
        return sum(s.delivered for s in self.sinks)

    @property  # type: ignore[override]
    def failed_attempts(self) -> int:
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
    if len(sinks) == 1:
        return sinks[0]
    return MultiSink(sinks)
