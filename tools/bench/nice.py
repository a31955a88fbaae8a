"""`vbgw bench nice --sessions N`: N concurrent NICE CXone contacts, each two sockets as CXone's
CAAE audio relay opens them (the simulator, tools/nice_sim.py: TX with the customer's audio, RX
with another speaker's as the agent; mu-law in 20 ms binary messages paced in real time), each
verified against an enrolled user its script parameters name (automatic verification, no agent
action), against a gateway started in a subprocess. A level passes when no audio was dropped
(every message reached the dialogs and the engine dropped none), the simulator saw no protocol
violation, and the p95 delay from the audio that completed the verification speech to its NORMAL
result is under 1 s. Reports the largest passing N, CPU per contact, and that p95."""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from tools.bench.audiohook import _metrics
from tools.bench.stream import DEFAULT_PROTOCOL, REPO, Server, _call_audio, _p95_from_metrics, enrol_bench_user, sweep
from tools.nice_sim import NiceSimOptions, run_load

NORMAL_P95_TARGET_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=100, help="concurrent contacts, two sockets each (the largest "
                                                               "to try with --sweep)")
    p.add_argument("--sweep", action="store_true", help="try 25%%, 50%%, 75%%, 100%% of --sessions")
    p.add_argument("--seconds", type=float, default=40.0, help="audio seconds per contact")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which contacts start")
    p.add_argument("--frame-ms", type=int, default=20, help="audio per message (CXone: 20 ms)")


def _add_bu(data_dir: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "nice", "--data-dir", str(data_dir), "add-bu",
                          "--bu-id", "bench", "--tenant", "bench", "--profile", "bench"],
                         check=True, capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()
    return out[-1].removeprefix("api_key=")


async def run_level(n: int, args, url: str, ws_url: str, key: str, calls: list[np.ndarray], server: Server) -> dict:
    mtok = (server.data_dir / "metrics.token").read_text().strip()
    async with aiohttp.ClientSession() as http:
        m0, before = await _metrics(http, url, mtok)
        cpu0, wall0, client0 = server.cpu_seconds(), time.monotonic(), time.process_time()

        def opts(i: int) -> NiceSimOptions:
            return NiceSimOptions(uri=f"{ws_url}/nice/ws", api_key=key, contact_id=f"bench-{n}-{i}",
                                  script_params={"user_id": "bench-user"}, speed=1.0, frame_ms=args.frame_ms,
                                  end="stop", timeout_s=30.0)

        pairs = [(calls[i % len(calls)], calls[(i + 1) % len(calls)]) for i in range(len(calls))]
        reports = await run_load(opts, pairs, n, rate=n / args.ramp if args.ramp > 0 else 0)
        cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
        client_cpu = time.process_time() - client0
        await asyncio.sleep(1.0)
        m1, text = await _metrics(http, url, mtok)
    frames_sent = sum(s.frames_sent for r in reports for s in r.sockets)
    frames_in = m1.get("vbgw_frames_total", 0) - m0.get("vbgw_frames_total", 0)
    dropped_s = m1.get("vbgw_engine_dropped_audio_seconds", 0) - m0.get("vbgw_engine_dropped_audio_seconds", 0)
    violations = sum(len(r.violations) for r in reports)
    not_ok = sum(not r.ok for r in reports)
    p95 = _p95_from_metrics(text, "vbgw_normal_result_delay_seconds", baseline=before)
    return {"contacts": n, "sockets": 2 * n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_per_contact": round(cpu / wall / n, 4) if n else 0.0, "client_cpu_s": round(client_cpu, 1),
            "frames_sent": frames_sent, "frames_received": frames_in, "engine_dropped_audio_s": dropped_s,
            "violations": violations, "failed_contacts": not_ok, "normal_delay_p95_s": p95,
            "passed": dropped_s == 0 and frames_in >= frames_sent and violations == 0 and not_ok == 0
            and p95 is not None and p95 < NORMAL_P95_TARGET_S}


async def amain(args) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="vbgw-bench-nice-"))
    server = Server(data_dir)
    pat = server.admin_bootstrap()
    key = _add_bu(data_dir)
    await server.start()
    url, ws_url = f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}"
    try:
        calls = _call_audio(args.protocol, args.seconds)
        if not await enrol_bench_user(url, ws_url, pat, args.protocol):
            return 1
        return await sweep(args, lambda n: run_level(n, args, url, ws_url, key, calls, server),
                           f"no dropped audio, no violation and NORMAL p95 < {NORMAL_P95_TARGET_S:g} s")
    finally:
        server.stop()


def main(args) -> int:
    return asyncio.run(amain(args))
