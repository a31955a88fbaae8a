"""The registry of live calls: every dialog, by call, (tenant id, dialog id) -> its dialogs, one
per owner (almost always one). The ownership rule is gateway/calls/dialog.py's; `CallRegistry`
is the interface sessions, connectors and surfaces find calls through, `LocalCallRegistry` its
one-process implementation and the only code of the rule.

Several gateway instances (issue #17) keep a shared directory behind the same interface: which
instance owns each call, so that a REST call that needs a call's audio state (enrolment from the
call, on-demand verification) is routed there; the dialogs themselves stay on the instance that
their audio reaches."""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Protocol

import structlog

from gateway.calls.bus import BusMessage
from gateway.calls.dialog import CallServices, Dialog, PushVerification
from gateway.calls.results import Status
from gateway.store.base import Profile

log = structlog.get_logger(__name__)


class LiveCall(Protocol):
    """A call as the live surfaces (SSE, Socket.IO) use it: a local `Dialog`, or, with several
    instances, a `RemoteCall` (gateway/calls/cluster.py) owned by another instance."""
    retired: bool

    @property
    def key(self) -> tuple[str, ...]: ...
    @property
    def status(self) -> str: ...
    @property
    def status_message(self) -> Status: ...
    @property
    def active_streams(self) -> int: ...
    @property
    def closed_at(self) -> float | None: ...
    @property
    def verification(self) -> PushVerification | None: ...
    def verification_snapshot(self) -> list[BusMessage]: ...
    async def request_verification(self, users: list[str]) -> tuple[PushVerification, bool]: ...


class CallRegistry(Protocol):
    def for_session(self, tenant_id: str, dialog_id: str, profile: Profile, create: bool = False) -> Dialog | None:
        """The dialog a session of `profile` reaches on its masterId: its own profile's; else an
        unowned AudioHook call, which it claims; else (create) a new one of its own."""
        ...

    def for_connector(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        """The dialog a connector's audio feeds (made if none)."""
        ...

    def of_group(self, tenant_id: str, dialog_id: str, group_id: str) -> list[Dialog]:
        """The call's dialogs owned by profiles of `group_id` (another group's look absent)."""
        ...

    def all(self) -> list[Dialog]: ...

    def live(self) -> int:
        """Dialogs a stream feeds now."""
        ...

    def __len__(self) -> int: ...

    async def retire(self, d: Dialog) -> None: ...

    async def locate(self, tenant_id: str, dialog_id: str, profile: Profile) -> LiveCall | None:
        """The session's call when another instance owns it; None when it is (or will be)
        this instance's (always None in one process)."""
        ...


class LocalCallRegistry:
    """The calls of this process. A reaper retires dialogs idle for retain_after_close_s and runs
    the other periodic chores it is given (expired session rows)."""

    def __init__(self, services: CallServices, retain_after_close_s: float,
                 chores: tuple[Callable[[], Awaitable[object]], ...] = ()):
        self.services = services
        self.retain_after_close_s = retain_after_close_s
        self.chores = chores
        self._calls: dict[tuple[str, str], list[Dialog]] = {}
        self._reaper: asyncio.Task | None = None

    def _new(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        d = Dialog(self.services, tenant_id, dialog_id, profile)
        self._calls.setdefault((tenant_id, dialog_id), []).append(d)
        self.services.metrics.inc("vbgw_dialogs_opened_total")
        return d

    def for_session(self, tenant_id: str, dialog_id: str, profile: Profile, create: bool = False) -> Dialog | None:
        """The dialog a session of `profile` reaches on its masterId: its own profile's; else an
        unowned AudioHook call, which it claims; else (create) a new one of its own, which the
        call's connector will feed if it has the same owner."""
        dialogs = self._calls.get((tenant_id, dialog_id), ())
        for d in dialogs:
            if d.owned_by(profile):
                return d
        for d in dialogs:
            if d.profile is None:
                d._claim(profile)
                d.log.info("dialog_claimed", profile_id=profile.id)
                return d
        return self._new(tenant_id, dialog_id, profile) if create else None

    def for_connector(self, tenant_id: str, dialog_id: str, profile: Profile | None) -> Dialog:
        """The dialog a connector's audio feeds. With an owner: that owner's dialog (made by a
        session before the audio, or new). Without: the call's unowned dialog, else the dialog
        of the first session that reached the call, else a new unowned one."""
        dialogs = self._calls.get((tenant_id, dialog_id), ())
        if profile is not None:
            return next((d for d in dialogs if d.owned_by(profile)), None) or self._new(tenant_id, dialog_id, profile)
        unowned = next((d for d in dialogs if d.profile is None), None)
        if unowned is not None:
            return unowned
        if dialogs:
            return min(dialogs, key=lambda d: d.created)
        return self._new(tenant_id, dialog_id, None)

    async def locate(self, tenant_id: str, dialog_id: str, profile: Profile) -> LiveCall | None:
        return None

    def of_group(self, tenant_id: str, dialog_id: str, group_id: str) -> list[Dialog]:
        return [d for d in self._calls.get((tenant_id, dialog_id), ()) if d.profile is not None
                and d.profile.group_id == group_id]

    def all(self) -> list[Dialog]:
        return [d for ds in self._calls.values() for d in ds]

    def live(self) -> int:
        return sum(1 for ds in self._calls.values() for d in ds if d.active_streams > 0)

    def __len__(self) -> int:
        return sum(len(ds) for ds in self._calls.values())

    async def retire(self, d: Dialog) -> None:
        call = (d.tenant_id, d.dialog_id)
        dialogs = self._calls.get(call, [])
        if d in dialogs:
            dialogs.remove(d)
            if not dialogs:
                del self._calls[call]
        d.retired = True
        await d.close()
        self.services.bus.forget(d.key)

    async def reap_once(self) -> None:
        """Retire dialogs without audio for retain_after_close_s: closed ones, and ones no
        stream ever fed (they would otherwise live for ever)."""
        now = time.time()
        for d in self.all():
            since = d.idle_since
            if since is not None and now - since > self.retain_after_close_s:
                await self.retire(d)

    async def housekeep(self) -> None:
        """One round of the reaper: retire idle dialogs, then the other chores (deleting expired
        session rows, their customProperties included, instead of keeping them for ever)."""
        try:
            await self.reap_once()
        except Exception:
            log.exception("dialog_reaper_failed")
        for chore in self.chores:
            try:
                await chore()
            except Exception:
                log.exception("housekeeping_failed", chore=getattr(chore, "__name__", "chore"))

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, max(1.0, self.retain_after_close_s / 4)))
            await self.housekeep()

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_loop())

    async def wait_streams_done(self, timeout: float) -> None:
        """Graceful shutdown: let open streams finish for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.live() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for d in self.all():
            await self.retire(d)
