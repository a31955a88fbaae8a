"""Which event loop runs the gateway: uvloop where it is installed.

Why: a CXone contact is two sockets of 50 messages a second each, so at 100 contacts the loop
wakes 10,000 times a second for 160-byte messages. aiohttp's WebSocket reader is already C;
what is left per message is the loop itself (the readiness callback, recv, the task wakeup).
Measured on the 2-core bench machine (`vbgw bench wsloop`, docs/benchmarks.md): a bare
aiohttp endpoint receiving 20 ms messages from 200 sockets spends 24-28 us per message on
asyncio's loop and 17-22 us on uvloop's, about a quarter less. Nothing else changes: aiohttp
and python-socketio run on either loop; the in-process tests keep pytest-aiohttp's asyncio
loop and the tests that start `vbgw serve` run it on uvloop, so both are exercised.

The load clients (benches, simulators) stay on asyncio's loop on purpose: uvloop's timers have
1 ms resolution, so a client on it sends its sockets' messages in bunches, which the gateway
receives in fewer wakeups than it would independent callers' messages.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")


def loop_factory(kind: str = "uvloop") -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The factory for `asyncio.Runner` (None: asyncio's default) and the name of the loop it
    makes: "uvloop" asked for but not installed (Windows has no wheels) falls back to asyncio."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            return None, "asyncio (uvloop is not installed)"
        return uvloop.new_event_loop, "uvloop"
    return None, "asyncio"


def run(main: Coroutine[Any, Any, T], kind: str = "uvloop") -> T:
    """asyncio.run on the chosen loop."""
    factory, _ = loop_factory(kind)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
