"""Several gateway instances (cluster.mode = "shared", docs/scale-out.md): the results bus and
the call registry over Redis, behind the interfaces one process uses (gateway/calls/bus.py,
gateway/calls/registry.py), so no connector and no surface changes.

* A call's dialog lives on the instance its audio reaches (the owner). Its bus key carries the
  owner's incarnation (`<instance id>.<random>/<serial>`), unique in the cluster.
* `ClusterResultsBus`: what a local dialog publishes is numbered and kept locally as in one
  process, and forwarded to the Redis channel of its key by one publisher task (bounded queue,
  oldest dropped while Redis is away: a call never waits for Redis). An instance whose local
  clients follow a call owned elsewhere subscribes to that call's channel and mirrors it: its
  history (seeded from the owner, then fed by the channel) and its state (`MirrorState`: status,
  streams, closed, verification), which `RemoteCall` shows the surfaces as a dialog.
* `CallDirectory`: one Redis entry per (tenant, masterId, owner profile) naming the owner
  instance, its internal URL and the dialog's bus key, with a lease the owner renews while
  the dialog lives. Entries are per owner profile, so a session reaches only its own
  profile's dialog on any instance (the ownership rule of gateway/calls/dialog.py).
* `ClusterCallRegistry`: the local registry plus the directory. `locate` tells a surface
  whether the session's call lives on another instance; a watcher declares a followed call
  lost (SYSTEM_ERROR, reason INSTANCE_LOST, delivered by this instance to its own clients)
  once its owner's lease has expired.

What needs the owner itself (its call state, a verification request) goes through `OwnerLink`,
implemented over HTTP with the cluster secret by gateway/web/cluster.py."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import structlog

from gateway.calls.bus import BusMessage, CallKey, LocalResultsBus
from gateway.calls.dialog import CALL_CLOSED, SYSTEM_ERROR, CallServices, Dialog, PushVerification
from gateway.calls.registry import LocalCallRegistry
from gateway.calls.results import Result, Status, VerificationResults, result_from_json
from gateway.store.base import Profile

log = structlog.get_logger(__name__)

INSTANCE_LOST = "INSTANCE_LOST"       # the reason of a call whose owner instance died
UNOWNED = "-"                         # the profile part of an unowned AudioHook call's entry
# An owner renews its entries every RENEW_EVERY of a lease; a follower declares a call lost once
# its entry has been absent for LOST_AFTER of a lease (an entry Redis lost in a restart is made
# again by its live owner well within that time).
RENEW_EVERY = 0.25
LOST_AFTER = 1.0


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:40]


# -- what crosses Redis -------------------------------------------------------------------------

@dataclass(frozen=True)
class CallState:
    """What a follower needs to tell whether a call is over: its streams and when it closed."""
    streams: int = 0
    closed_at: float | None = None


def envelope(key: CallKey, msg: BusMessage, state: CallState) -> str:
    """A published message as it crosses instances: the result's own JSON (Result.to_json),
    its number and time, and the call's state when it was published."""
    return json.dumps({"k": list(key), "q": msg.seq, "t": msg.ts, "r": msg.payload.to_json(),
                       "s": state.streams, "c": state.closed_at}, separators=(",", ":"))


def open_envelope(text: str | bytes) -> tuple[CallKey, BusMessage, CallState]:
    d = json.loads(text)
    return (tuple(d["k"]), BusMessage(result_from_json(d["r"]), int(d["q"]), float(d["t"])),
            CallState(int(d["s"]), d["c"]))


def message_json(msg: BusMessage) -> dict[str, Any]:
    return {"q": msg.seq, "t": msg.ts, "r": msg.payload.to_json()}


def message_from(d: dict[str, Any]) -> BusMessage:
    return BusMessage(result_from_json(d["r"]), int(d["q"]), float(d["t"]))


@dataclass
class MirrorState:
    """A followed remote call as the owner last described it (seeded from the owner, then kept
    up to date by the messages of its channel)."""
    entry: "DirectoryEntry"
    entry_key: str                     # its directory entry (Redis key), watched for the owner's lease
    status_message: Status = field(default_factory=lambda: Status("CALL_OPENED"))
    streams: int = 0
    closed_at: float | None = None
    verification: PushVerification | None = None
    started: BusMessage | None = None
    latest: BusMessage | None = None
    lost: bool = False
    absent_since: float | None = None
    followed_at: float = field(default_factory=time.monotonic)

    def apply(self, msg: BusMessage, state: CallState | None) -> None:
        if state is not None:
            self.streams, self.closed_at = state.streams, state.closed_at
        p = msg.payload
        if isinstance(p, Status):
            self.status_message = p
        elif isinstance(p, VerificationResults):
            if p.result_type == "STARTING":
                users = tuple(r.user_id for r in p.results)
                self.verification = PushVerification(p.epoch, users)
                self.started, self.latest = msg, None
            elif self.verification is not None and p.epoch == self.verification.epoch:
                self.latest = msg


# -- the bus ------------------------------------------------------------------------------------

class ClusterResultsBus(LocalResultsBus):
    """The results bus of an instance of a cluster (see the module docstring). `publish` stays
    synchronous and never waits for Redis."""

    def __init__(self, redis_url: str, prefix: str, incarnation: str, max_pending: int = 10000,
                 history: int = 64, on_resubscribed: Callable[[list[CallKey]], Any] | None = None):
        super().__init__(history)
        self.redis_url, self.prefix, self.incarnation = redis_url, prefix, incarnation
        self.max_pending = max_pending
        self.state_of: Callable[[CallKey], CallState] = lambda key: CallState()
        self.on_resubscribed = on_resubscribed
        self.mirrors: dict[CallKey, MirrorState] = {}
        self.dropped = 0                      # messages dropped while Redis was unreachable
        self.forwarded = 0
        self._pending: deque[tuple[str, str]] = deque()
        self._wake = asyncio.Event()
        self._want: dict[str, CallKey] = {}          # channel -> followed key
        self._ready: dict[str, asyncio.Event] = {}
        self._client: Any = None
        self._tasks: list[asyncio.Task] = []
        self._redis_ok = True

    # -- keys ---------------------------------------------------------------------------------
    def local(self, key: CallKey) -> bool:
        return key[2].startswith(self.incarnation + "/")

    def channel(self, key: CallKey) -> str:
        return f"{self.prefix}:results:{_digest(*key)}"

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, key: CallKey, payload: Result) -> BusMessage:
        if not self.local(key):
            # A follower's own message on a mirrored call (INSTANCE_LOST): after the owner's.
            mirror_seq = max((m.seq for m in self._history.get(key, ())), default=0)
            msg = BusMessage(payload, mirror_seq + 1)
            self._deliver(key, msg)
            return msg
        msg = super().publish(key, payload)
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((self.channel(key), envelope(key, msg, self.state_of(key))))
        self._wake.set()
        return msg

    def _deliver(self, key: CallKey, msg: BusMessage, state: CallState | None = None) -> None:
        """A message of a followed call: into its history and to its local subscribers, once
        (a message already seen, e.g. replayed after a reconnection, is skipped)."""
        hist = self._history[key]
        if any(m.seq == msg.seq for m in hist) or (len(hist) >= self._history_len and msg.seq < hist[0].seq):
            return
        hist.append(msg)
        hist.sort(key=lambda m: m.seq)
        if len(hist) > self._history_len:
            del hist[0]
        mirror = self.mirrors.get(key)
        if mirror is not None:
            mirror.apply(msg, state)
        for sub in list(self._subs.get(key, ())):
            sub.offer(msg)

    def seed(self, key: CallKey, entry: "DirectoryEntry", entry_key: str, state: dict[str, Any]) -> MirrorState:
        """A followed call as its owner describes it now (OwnerLink.call_state): its mirror,
        and the recent messages this instance missed."""
        mirror = self.mirrors.get(key)
        if mirror is None or mirror.lost:
            mirror = self.mirrors[key] = MirrorState(entry, entry_key)
        mirror.followed_at = time.monotonic()
        cs = CallState(int(state["streams"]), state.get("closed_at"))
        for d in state.get("history", ()):
            self._deliver(key, message_from(d), cs)
        for name in ("started", "latest"):
            if state.get(name):
                mirror.apply(message_from(state[name]), None)
        mirror.status_message = result_from_json(state["status"])      # type: ignore[assignment]
        mirror.streams, mirror.closed_at = cs.streams, cs.closed_at
        return mirror

    async def follow(self, key: CallKey, timeout: float = 3.0) -> None:
        """Subscribe this instance to a remote call's channel (once Redis confirmed it, so no
        message published after this returns is missed)."""
        ch = self.channel(key)
        if ch in self._want and ch not in self._ready:
            return
        self._want[ch] = key
        ready = self._ready.setdefault(ch, asyncio.Event())
        self._wake.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout)

    def unfollow(self, key: CallKey) -> None:
        """Stop following a call that has no mirror (its owner could not describe it)."""
        if key not in self.mirrors:
            self._want.pop(self.channel(key), None)
            self._ready.pop(self.channel(key), None)

    def forget(self, key: CallKey) -> None:
        super().forget(key)
        self._drop_mirror(key)

    def _drop_mirror(self, key: CallKey) -> None:
        self.mirrors.pop(key, None)
        self._history.pop(key, None)
        self._seqs.pop(key, None)
        self._want.pop(self.channel(key), None)

    # -- the Redis side -----------------------------------------------------------------------
    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis
            self._client = aioredis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=3,
                                             health_check_interval=5)
        return self._client

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publisher(), name="vbgw-cluster-publish"),
                       asyncio.create_task(self._listener(), name="vbgw-cluster-listen")]

    async def close(self, flush_s: float = 2.0) -> None:
        """Stop, after giving what is queued (the calls' last statuses at shutdown) a moment to
        reach Redis."""
        deadline = time.monotonic() + flush_s
        while self._pending and self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    def _redis_state(self, ok: bool, exc: BaseException | None = None) -> None:
        """One log line when Redis is lost, one when it is back (not one per attempt)."""
        if ok != self._redis_ok:
            self._redis_ok = ok
            if ok:
                log.info("cluster_redis_reconnected")
            else:
                log.error("cluster_redis_unreachable", error=type(exc).__name__ if exc else None,
                          pending=len(self._pending))

    async def _publisher(self) -> None:
        backoff = 0.1
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending.popleft() for _ in range(min(256, len(self._pending)))]
            try:
                pipe = self._redis().pipeline(transaction=False)
                for ch, text in batch:
                    pipe.publish(ch, text)
                await pipe.execute()
            except BaseException as exc:
                # not sent: back in front of what came meanwhile, within the bound
                self._pending.extendleft(reversed(batch))
                while len(self._pending) > self.max_pending:
                    self._pending.popleft()
                    self.dropped += 1
                if not isinstance(exc, Exception):
                    raise
                self._redis_state(False, exc)
                await asyncio.sleep(backoff + random.uniform(0, backoff))
                backoff = min(2.0, backoff * 2)
                continue
            backoff = 0.1
            self._redis_state(True)
            self.forwarded += len(batch)

    async def _listener(self) -> None:
        """Keeps this instance subscribed to the channels of the calls it follows; after a lost
        connection, subscribes again and asks for what was missed (on_resubscribed)."""
        backoff = 0.1
        first = True
        while True:
            pubsub = None
            try:
                pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(f"{self.prefix}:cluster")     # keeps the connection open
                subscribed: set[str] = set()
                if not first:
                    self._redis_state(True)
                    if self.on_resubscribed is not None and self._want:
                        keys = list(self._want.values())
                        await pubsub.subscribe(*self._want)
                        subscribed |= set(self._want)
                        asyncio.ensure_future(self.on_resubscribed(keys))
                first = False
                backoff = 0.1
                while True:
                    want = set(self._want)
                    if want - subscribed:
                        await pubsub.subscribe(*(want - subscribed))
                    if subscribed - want:
                        await pubsub.unsubscribe(*(subscribed - want))
                    subscribed = want
                    for ch in want:
                        ev = self._ready.pop(ch, None)
                        if ev is not None:
                            ev.set()
                    msg = await pubsub.get_message(timeout=0.05)
                    while msg is not None:
                        if msg.get("type") == "message":
                            self._on_message(msg["data"])
                        msg = await pubsub.get_message(timeout=0)
            except asyncio.CancelledError:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                raise
            except Exception as exc:                   # noqa: BLE001 - reconnect whatever happened
                self._redis_state(False, exc)
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                await asyncio.sleep(backoff + random.uniform(0, backoff))
                backoff = min(2.0, backoff * 2)
                first = False

    def _on_message(self, data: bytes) -> None:
        try:
            key, msg, state = open_envelope(data)
        except (ValueError, KeyError, TypeError):
            log.warning("cluster_bad_message")
            return
        if key in self.mirrors:
            self._deliver(key, msg, state)

    def sweep(self, idle_s: float = 30.0) -> None:
        """Stop following remote calls no local client has listened to for `idle_s`."""
        now = time.monotonic()
        for key, mirror in list(self.mirrors.items()):
            if not self._subs.get(key) and now - mirror.followed_at > idle_s:
                self._drop_mirror(key)


# -- the directory ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DirectoryEntry:
    instance: str
    url: str
    key: CallKey

    def to_json(self) -> str:
        return json.dumps({"instance": self.instance, "url": self.url, "key": list(self.key)},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "DirectoryEntry":
        d = json.loads(text)
        return cls(d["instance"], d["url"], tuple(d["key"]))


# Renew only our own entry (or make it again after Redis lost it): another instance that took
# the call over keeps it.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CallDirectory:
    def __init__(self, bus: ClusterResultsBus, instance: str, url: str, lease_s: float):
        self.bus, self.instance, self.url, self.lease_s = bus, instance, url, lease_s

    def entry_key(self, tenant_id: str, dialog_id: str, profile_id: str | None) -> str:
        return f"{self.bus.prefix}:call:{_digest(tenant_id, dialog_id, profile_id or UNOWNED)}"

    def entry_of(self, d: Dialog) -> tuple[str, str]:
        return (self.entry_key(d.tenant_id, d.dialog_id, d.profile.id if d.profile else None),
                DirectoryEntry(self.instance, self.url, d.key).to_json())

    async def claim(self, d: Dialog) -> None:
        """This instance owns `d` now (the connector where the audio lands takes the call)."""
        k, v = self.entry_of(d)
        await self.bus._redis().set(k, v, px=int(self.lease_s * 1000))

    async def renew(self, dialogs: list[Dialog]) -> list[bool]:
        """Renew the entries of `dialogs`; False for a dialog whose entry another instance holds."""
        if not dialogs:
            return []
        r = self.bus._redis()
        pipe = r.pipeline(transaction=False)
        for d in dialogs:
            k, v = self.entry_of(d)
            pipe.eval(_RENEW, 1, k, v, int(self.lease_s * 1000))
        return [bool(int(x)) for x in await pipe.execute()]

    async def release(self, d: Dialog, profile_id: str | None = None) -> None:
        k = self.entry_key(d.tenant_id, d.dialog_id, profile_id if profile_id is not None else
                           (d.profile.id if d.profile else None))
        v = DirectoryEntry(self.instance, self.url, d.key).to_json()
        await self.bus._redis().eval(_RELEASE, 1, k, v)

    async def lookup(self, tenant_id: str, dialog_id: str, profile_id: str | None) -> DirectoryEntry | None:
        raw = await self.bus._redis().get(self.entry_key(tenant_id, dialog_id, profile_id))
        return DirectoryEntry.from_json(raw) if raw else None

    async def lookup_many(self, keys: list[str]) -> list[DirectoryEntry | None]:
        if not keys:
            return []
        raws = await self.bus._redis().mget(keys)
        return [DirectoryEntry.from_json(r) if r else None for r in raws]


# -- the registry -------------------------------------------------------------------------------

class OwnerLink(Protocol):
    """Requests to the instance that owns a call (gateway/web/cluster.py: HTTP, signed)."""
    async def call_state(self, entry: DirectoryEntry) -> dict[str, Any] | None:
        """The call's state (status, streams, closed_at, verification, history), or None if
        the owner no longer has it."""
        ...

    async def request_verification(self, entry: DirectoryEntry, users: list[str]) -> dict[str, Any]:
        """Dialog.request_verification on the owner: {"epoch", "users", "started", "snapshot"}."""
        ...


class OwnerUnreachable(Exception):
    code = "OWNER_UNREACHABLE"


class RemoteCall:
    """A call owned by another instance, as the surfaces of this one see a dialog: key, status,
    streams, verification (from the mirror), and verification requests forwarded to the owner."""
    remote = True

    def __init__(self, registry: "ClusterCallRegistry", entry: DirectoryEntry, mirror: MirrorState,
                 profile: Profile):
        self.registry, self.entry, self.mirror = registry, entry, mirror
        self.key: CallKey = entry.key
        self.tenant_id, self.dialog_id = entry.key[0], entry.key[1]
        self.profile = profile
        self.retired = False

    @property
    def status_message(self) -> Status:
        return self.mirror.status_message

    @property
    def status(self) -> str:
        return self.mirror.status_message.status

    @property
    def active_streams(self) -> int:
        return self.mirror.streams

    @property
    def closed_at(self) -> float | None:
        return self.mirror.closed_at

    @property
    def verification(self) -> PushVerification | None:
        return self.mirror.verification

    def verification_snapshot(self) -> list[BusMessage]:
        return [m for m in (self.mirror.started, self.mirror.latest) if m is not None]

    async def request_verification(self, users: list[str]) -> tuple[PushVerification, bool]:
        if self.mirror.lost:
            # The owner is gone: nothing can be verified on this call any more.
            return self.mirror.verification or PushVerification(0, tuple(users)), False
        out = await self.registry.link.request_verification(self.entry, users)
        v = PushVerification(int(out["epoch"]), tuple(out["users"]))
        snapshot = [message_from(d) for d in out.get("snapshot", ())]
        for msg in snapshot:
            self.registry.bus._deliver(self.key, msg)
        if self.mirror.verification is None or self.mirror.verification.epoch <= v.epoch:
            self.mirror.verification = v
        return v, bool(out["started"])


class ClusterCallRegistry(LocalCallRegistry):
    """The calls of this instance (LocalCallRegistry: the ownership rule, the reaper) plus the
    directory: every local dialog is claimed and its lease renewed while it lives; `locate`
    finds a session's call on another instance; followed remote calls whose owner died are
    ended for this instance's clients."""

    def __init__(self, services: CallServices, retain_after_close_s: float, bus: ClusterResultsBus,
                 directory: CallDirectory, link: OwnerLink | None = None, chores=()):
        super().__init__(services, retain_after_close_s, chores)
        self.bus, self.directory = bus, directory
        self.link: OwnerLink = link       # type: ignore[assignment]  # set by gateway/web/cluster.py
        self._by_key: dict[CallKey, Dialog] = {}
        self._moved: dict[CallKey, DirectoryEntry] = {}      # local dialogs whose call another instance took
        self._claims: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        bus.state_of = self.call_state
        bus.on_resubscribed = self.resync

    def call_state(self, key: CallKey) -> CallState:
        d = self._by_key.get(key)
        return CallState(d.active_streams, d.closed_at) if d is not None else CallState()

    def dialog_by_key(self, key: CallKey) -> Dialog | None:
        return self._by_key.get(key)

    def _spawn(self, coro, what: str) -> None:
        async def guarded():
            try:
                await coro
            except Exception as exc:              # noqa: BLE001 - the renew loop puts it right
                log.warning("cluster_directory_failed", what=what, error=type(exc).__name__)
        t = asyncio.ensure_future(guarded())
        self._claims.add(t)
        t.add_done_callback(self._claims.discard)

    def _new(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        d = super()._new(tenant_id, dialog_id, profile)
        self._by_key[d.key] = d
        self._spawn(self.directory.claim(d), "claim")
        return d

    def for_session(self, tenant_id: str, dialog_id: str, profile: Profile, create: bool = False) -> Dialog | None:
        before = {id(d): d.profile for d in self._calls.get((tenant_id, dialog_id), ())}
        d = super().for_session(tenant_id, dialog_id, profile, create)
        if d is not None and id(d) in before and before[id(d)] is None:
            # claimed by this session: its entry moves from the unowned one to its profile's
            self._spawn(self.directory.release(d, UNOWNED), "release")
            self._spawn(self.directory.claim(d), "claim")
        return d

    async def retire(self, d: Dialog) -> None:
        await super().retire(d)
        self._by_key.pop(d.key, None)
        self._moved.pop(d.key, None)
        self._spawn(self.directory.release(d), "release")

    # -- calls of other instances ----------------------------------------------------------
    async def owner_of(self, tenant_id: str, dialog_id: str, profile: Profile) -> DirectoryEntry | None:
        """The directory entry of the session's call when another instance owns it (None: it
        is, or will be, local). For forwarding a request: nothing is followed."""
        local = self.for_session(tenant_id, dialog_id, profile)
        if local is not None and local.key not in self._moved:
            return None
        entry = await self.directory.lookup(tenant_id, dialog_id, profile.id)
        return entry if entry is not None and entry.instance != self.directory.instance else None

    async def locate(self, tenant_id: str, dialog_id: str, profile: Profile) -> RemoteCall | None:
        """The session's call when another instance owns it (None: it is, or will be, local;
        a local dialog whose call moved to another instance is bridged, and new requests go
        to the new owner)."""
        entry = await self.owner_of(tenant_id, dialog_id, profile)
        if entry is None:
            return None
        entry_key = self.directory.entry_key(tenant_id, dialog_id, profile.id)
        mirror = self.bus.mirrors.get(entry.key)
        if mirror is None or mirror.lost:
            await self.bus.follow(entry.key)
            try:
                state = await self.link.call_state(entry)
            except BaseException:
                self.bus.unfollow(entry.key)
                raise
            if state is None:
                self.bus.unfollow(entry.key)
                return None                  # the owner no longer has it: a new call, here
            mirror = self.bus.seed(entry.key, entry, entry_key, state)
        mirror.followed_at = time.monotonic()
        return RemoteCall(self, entry, mirror, profile)

    async def resync(self, keys: list[CallKey]) -> None:
        """After Redis came back: what the followed calls published meanwhile, from their owners."""
        for key in keys:
            mirror = self.bus.mirrors.get(key)
            if mirror is None or mirror.lost:
                continue
            try:
                state = await self.link.call_state(mirror.entry)
            except Exception:                      # noqa: BLE001 - the watcher decides if it is lost
                continue
            if state is not None:
                self.bus.seed(key, mirror.entry, mirror.entry_key, state)

    async def watch_once(self) -> None:
        """Followed calls whose owner's entry is gone for LOST_AFTER of a lease (the owner renews
        every RENEW_EVERY of one, also after Redis lost its data) are over for this instance's
        clients."""
        live = [(k, m) for k, m in self.bus.mirrors.items() if not m.lost]
        if not live:
            return
        found = await self.directory.lookup_many([m.entry_key for _, m in live])
        now = time.monotonic()
        for (key, mirror), entry in zip(live, found):
            if entry is not None and entry.key == key:
                mirror.absent_since = None
                continue
            if entry is not None:
                continue                       # re-opened elsewhere: the old owner ends its own call
            if mirror.absent_since is None:
                mirror.absent_since = now
            if now - mirror.absent_since >= self.directory.lease_s * LOST_AFTER:
                self._lost(key, mirror)

    def _lost(self, key: CallKey, mirror: MirrorState) -> None:
        mirror.lost = True
        over = mirror.status_message.status in (CALL_CLOSED, SYSTEM_ERROR) and mirror.streams == 0 \
            and mirror.closed_at is not None
        log.warning("cluster_owner_lost", dialog_id=key[1], owner=mirror.entry.instance, call_over=over)
        if over:
            return
        mirror.streams, mirror.closed_at = 0, time.time()
        self.bus.publish(key, Status(SYSTEM_ERROR, reason=INSTANCE_LOST))

    async def renew_once(self) -> None:
        """Renew this instance's entries. A dialog no audio ever reached whose call another
        instance has taken (the call's audio landed there after a session came here first)
        is bridged to it: its clients here get the call's results from now on."""
        dialogs = [d for d in self.all() if d.key not in self._moved]
        for d, ours in zip(dialogs, await self.directory.renew(dialogs)):
            if ours or d.streamed:
                continue
            entry = await self.directory.lookup(d.tenant_id, d.dialog_id, d.profile.id if d.profile else None)
            if entry is not None and entry.instance != self.directory.instance and entry.key != d.key:
                self._moved[d.key] = entry
                log.info("cluster_call_moved", dialog_id=d.dialog_id, owner=entry.instance)
                d._spawn(self._bridge(d, entry))

    async def _bridge(self, d: Dialog, entry: DirectoryEntry) -> None:
        """Relay the call's messages from its new owner onto `d`, whose SSE and Socket.IO
        clients keep listening to it; a verification asked here before the audio is asked there."""
        entry_key = self.directory.entry_key(d.tenant_id, d.dialog_id, d.profile.id if d.profile else None)
        await self.bus.follow(entry.key)
        sub = self.bus.subscribe(entry.key, maxsize=1024)
        try:
            state = await self.link.call_state(entry)
            if state is None:
                return                               # the new owner already let it go
            mirror = self.bus.seed(entry.key, entry, entry_key, state)
            if d.verification is not None:
                await self.link.request_verification(entry, list(d.verification.users))
            last = 0
            for msg in self.bus.recent(entry.key):
                last = self._relay(d, msg, mirror, last)
            while True:
                got = await sub.get()
                if got is not None:
                    mirror.followed_at = time.monotonic()
                    last = self._relay(d, got, mirror, last)
        except asyncio.CancelledError:
            raise
        except Exception:                            # noqa: BLE001 - the clients here reconnect
            log.exception("cluster_bridge_failed", dialog_id=d.dialog_id)
        finally:
            sub.close()
            self.bus.unfollow(entry.key)

    @staticmethod
    def _relay(d: Dialog, msg: BusMessage, mirror: MirrorState, last: int) -> int:
        if msg.seq <= last:
            return last
        p = msg.payload
        if isinstance(p, Status):
            d.closed_at = mirror.closed_at
            d.publish_status(p.status, p.reason, p.connector)
        elif isinstance(p, VerificationResults):
            v = d.verification
            if v is None or v.epoch != p.epoch:
                users = tuple(r.user_id for r in p.results) if p.result_type == "STARTING" else \
                    (v.users if v is not None else ())
                v = d.verification = PushVerification(p.epoch, users)
            elif p.result_type == "STARTING":
                return msg.seq                       # the one asked here: already announced
            d.publish_verification(v, p.result_type, list(p.results), p.final)
        else:
            d.bus.publish(d.key, p)
        return msg.seq

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.directory.lease_s * RENEW_EVERY)
            try:
                await self.renew_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:               # noqa: BLE001 - Redis away: try again next round
                log.debug("cluster_renew_failed", error=type(exc).__name__)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.directory.lease_s / 4))
            try:
                await self.watch_once()
                self.bus.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:               # noqa: BLE001 - Redis away: nobody is declared lost
                log.debug("cluster_watch_failed", error=type(exc).__name__)

    def start(self) -> None:
        super().start()
        self._loops = [asyncio.create_task(self._renew_loop(), name="vbgw-cluster-renew"),
                       asyncio.create_task(self._watch_loop(), name="vbgw-cluster-watch")]

    async def close(self) -> None:
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await super().close()
        if self._claims:
            await asyncio.wait(list(self._claims), timeout=2)
