"""`python -m tools.bench.live_server serve ...`: the gateway CLI with a results-bus tap, for
`vbgw bench live` only. Every bus publication is appended to $VBGW_BENCH_BUS_TAP as one JSON line
[publish time (time.time()), dialog id, kind, match key], so the bench can compute the delay from
a result's publication to each client's receipt (same machine, same clock); and the event loop's
lag every 100 ms. Nothing else changes."""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import time

from gateway.cli import serve as serve_command
from gateway.calls import bus
from gateway.cli.main import main


def match_key(kind: str, data: dict) -> str:
    """What identifies a message within its dialog, for the gateway and the bench clients alike
    (`data`: the message's JSON object, Result.to_dict())."""
    if kind == "status":
        return data["status"]
    if kind == "clean_speech":
        return str(data["speech_millis"])
    if kind == "verification":
        return f'{data["result_type"]}:{data["results"][0]["speech_millis"]}'
    return ""


def install_tap(path: str) -> None:
    out = open(path, "a", buffering=1)       # line-buffered: nothing lost if the server is killed
    atexit.register(out.close)
    publish = bus.LocalResultsBus.publish

    def tapped(self, key, payload):
        msg = publish(self, key, payload)
        out.write(json.dumps([msg.ts, key[1], payload.kind, match_key(payload.kind, payload.to_dict())]) + "\n")
        return msg

    bus.LocalResultsBus.publish = tapped

    # Event-loop lag (how late a 100 ms sleep wakes up), as ["_lag", seconds] lines.
    create_app = serve_command.create_app

    def create_app_with_lag_probe(*args, **kwargs):
        app = create_app(*args, **kwargs)

        async def probe(app):
            async def loop():
                while True:
                    t = time.monotonic()
                    await asyncio.sleep(0.1)
                    out.write(json.dumps([time.time(), "", "_lag", round(time.monotonic() - t - 0.1, 4)]) + "\n")
            task = asyncio.create_task(loop())
            yield
            task.cancel()

        app.cleanup_ctx.append(probe)
        return app

    serve_command.create_app = create_app_with_lag_probe  # what `vbgw serve` builds its app with


if __name__ == "__main__":
    install_tap(os.environ["VBGW_BENCH_BUS_TAP"])
    sys.exit(main())
