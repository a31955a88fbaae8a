"""server.event_loop: uvloop where installed, asyncio's loop on request or where it is not."""
from __future__ import annotations

import asyncio
import builtins

import pytest

from gateway.infra import eventloop
from gateway.infra.config import ConfigError, Settings, load_settings


def test_default_is_uvloop_and_asyncio_can_be_chosen():
    assert Settings().server.event_loop == "uvloop"
    assert eventloop.loop_factory("asyncio") == (None, "asyncio")
    uvloop = pytest.importorskip("uvloop")
    factory, name = eventloop.loop_factory("uvloop")
    assert name == "uvloop" and factory is uvloop.new_event_loop

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__
    assert eventloop.run(which(), "uvloop").startswith("uvloop")
    assert eventloop.run(which(), "asyncio").startswith("asyncio")


def test_uvloop_missing_falls_back_to_asyncio_and_says_so(monkeypatch):
    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no wheel for this platform")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    factory, name = eventloop.loop_factory("uvloop")
    assert factory is None and name == "asyncio (uvloop is not installed)"


def test_the_shipped_config_and_a_bad_value():
    assert load_settings(environ={}).server.event_loop == "uvloop"
    assert load_settings(environ={"VBGW_SERVER__EVENT_LOOP": "asyncio"}).server.event_loop == "asyncio"
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings(environ={"VBGW_SERVER__EVENT_LOOP": "trio"})
