"""The stream contract, gateway side: how any audio source drives a call.

Every connector (the OCP direct stream, Genesys AudioHook, NICE CXone, and whatever comes next)
talks to its call through one `StreamAttachment`, which implements `connectors.base.StreamPort`:

    attach()         the busy check (per channel: two NICE sockets of one contact, TX and RX,
                     feed one dialog), the stream's start on the dialog, the stream metric
    push(frame)      normalised audio into the call
    wait_capacity()  backpressure: a sender faster than real time waits for the engine
    report(s, r)     a status the connector's protocol defines (AudioHook's ERR_CODE_xx)
    finish()         the call's final results, by the dialog's one rule (Dialog.score_so_far)
    end(reason, resume_within_s=0)
                     the stream is over; the last stream's end closes the call, at once or,
                     with `resume_within_s`, only if no stream attaches again within that time
                     (NICE hold and resume: the same dialog continues, no result lost or repeated)

Connectors know nothing of dialogs, aiohttp, the engine or a surface: they see a StreamPort."""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING

from connectors.base import Channel, Frame
from gateway.calls.dialog import ALL_CHANNELS, Dialog, DialogBusy

if TYPE_CHECKING:
    from gateway.infra.metrics import Metrics

BACKPRESSURE_S = 4.0            # unprocessed audio per stream before reading pauses
BACKPRESSURE_MAX_WAIT_S = 10.0  # < common WebSocket keepalive timeouts (20 s): pings are read between waits

_IDS = itertools.count(1)

__all__ = ["ALL_CHANNELS", "DialogBusy", "StreamAttachment", "attach"]


class StreamAttachment:
    """One stream feeding one dialog (connectors.base.StreamPort)."""

    def __init__(self, dialog: Dialog, connector: str, channels: frozenset[Channel], metrics: "Metrics",
                 final_drain_s: float = 5.0):
        self.dialog = dialog
        self.final_drain_s = final_drain_s
        self.dialog_id = dialog.dialog_id
        self.connector = connector
        self.channels = channels
        self.metrics = metrics
        self.id = next(_IDS)
        self._work: set[asyncio.Task] = set()
        self._ended = False

    def track(self, task: asyncio.Task) -> None:
        """Work this stream started for its call (a connector's automatic verification): the
        final results wait for it, and the stream's end cancels what is left of it."""
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def push(self, frame: Frame) -> None:
        self.dialog.push(frame)

    async def wait_capacity(self) -> None:
        # Keep at most BACKPRESSURE_S of unprocessed audio per stream; past the deadline the
        # engine's own overload rule (drop the oldest, flagged in metrics) applies instead.
        session = self.dialog.engine_session
        if session.pending_s <= BACKPRESSURE_S:
            return                      # the common case, once per message: no clock read
        deadline = time.monotonic() + BACKPRESSURE_MAX_WAIT_S
        while session.pending_s > BACKPRESSURE_S and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def report(self, status: str, reason: str) -> None:
        self.dialog.publish_status(status, reason=reason, connector=self.connector)

    async def wait_work(self) -> None:
        """Let the work this stream started for its call (track) finish: final results need the
        verification it may be starting."""
        for task in list(self._work):
            if not task.done():
                await task

    async def finish(self) -> None:
        """Final results for the users under verification, from all the call's speech: the
        call's milestones first (their results and events go out before the connector says the
        session closed), then the score of everything, marked final."""
        await self.wait_work()
        d = self.dialog
        v = d.verification
        if d.profile is None or v is None or d.no_customer_audio:
            return
        await d.drain(timeout=self.final_drain_s)
        await d.score_so_far(v, final=True)

    async def end(self, reason: str, resume_within_s: float = 0.0) -> None:
        """Always once, last. `reason`: "completed" or "disconnected" close the call normally,
        anything else (an error code) as SYSTEM_ERROR."""
        if self._ended:
            return
        self._ended = True
        for task in list(self._work):
            task.cancel()
        await self.dialog.detach(self.id, reason, resume_within_s)


def attach(dialog: Dialog, *, connector: str, metrics: "Metrics", channels: frozenset[Channel] = ALL_CHANNELS,
           customer_audio: bool = True, mixed: bool = False, final_drain_s: float = 5.0) -> StreamAttachment:
    """A new stream of `connector` feeding `channels` of `dialog` (DialogBusy if another stream
    feeds one of them). The OCP stream and AudioHook feed the whole call (ALL_CHANNELS, their
    historical rule: one stream per call); a NICE socket feeds its perspective's channel.
    `customer_audio=False`: the stream carries no customer channel (statuses say
    NO_CUSTOMER_AUDIO); `mixed`: its customer audio is mixed with the agent's; `final_drain_s`:
    how long `finish` lets the engine catch up before the final score."""
    stream = StreamAttachment(dialog, connector, channels, metrics, final_drain_s)
    dialog.attach(stream.id, channels, customer_audio=customer_audio, mixed=mixed)
    metrics.inc("vbgw_streams_total", connector=connector)
    return stream
