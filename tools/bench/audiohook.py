"""`vbgw bench audiohook --sessions N`: N concurrent Genesys AudioHook calls (the simulator:
signed upgrade, stereo PCMU, 200 ms frames paced in real time, pings every 5 s), each verified
against an enrolled user named in customConfig (push verification with no agent action), against
a gateway started in a subprocess. A level passes when no pong took over 1 s, no audio was
dropped (every frame reached the dialogs and the engine dropped none) and the simulator saw no
protocol violation. Reports the largest passing N, CPU per call, pong p99 and the p95 delay
from the audio that completed the speech threshold to the NORMAL result."""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np

from tools.audiohook_sim import SimOptions, run_load
from tools.bench.stream import (
    DEFAULT_PROTOCOL, REPO, Server, _call_audio, _p95_from_metrics, _parse_metrics, add_cluster_arguments,
    drop_cluster_schema, enrol_bench_user, sweep,
)

LATE_PONG_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=100, help="concurrent calls (the largest to try with --sweep)")
    p.add_argument("--sweep", action="store_true", help="try 25%%, 50%%, 75%%, 100%% of --sessions")
    p.add_argument("--seconds", type=float, default=40.0, help="audio seconds per call")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which calls start")
    add_cluster_arguments(p)


def _add_org(server: Server) -> tuple[str, str, str]:
    org_id = str(uuid.uuid4())
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "audiohook", "--data-dir", str(server.data_dir),
                          "add-org", "--org-id", org_id, "--tenant", "bench", "--profile", "bench"],
                         check=True, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **server.env}).stdout.strip().splitlines()
    return org_id, out[-2].removeprefix("api_key="), out[-1].removeprefix("client_secret=")


async def _metrics(http, url: str, mtok: str) -> tuple[dict[str, float], str]:
    async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {mtok}"}) as r:
        text = await r.text()
    return _parse_metrics(text), text


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run_level(n: int, args, url: str, ws_url: str, org: tuple[str, str, str], calls: list[np.ndarray],
                    server: Server) -> dict:
    org_id, key, secret = org
    mtok = (server.data_dir / "metrics.token").read_text().strip()
    async with aiohttp.ClientSession() as http:
        m0, _ = await _metrics(http, url, mtok)
        cpu0, wall0, client0 = server.cpu_seconds(), time.monotonic(), time.process_time()

        def opts(i: int) -> SimOptions:
            return SimOptions(uri=f"{ws_url}/audiohook/ws", api_key=key, client_secret=secret, org_id=org_id,
                              custom_config={"userIds": ["bench-user"]}, speed=1.0)

        pairs = [(calls[i % len(calls)], calls[(i + 1) % len(calls)]) for i in range(len(calls))]
        reports = await run_load(opts, pairs, n, rate=n / args.ramp if args.ramp > 0 else 0)
        cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
        client_cpu = time.process_time() - client0
        await asyncio.sleep(1.0)
        m1, text = await _metrics(http, url, mtok)
    rtts = [x for r in reports for x in r.rtts]
    frames_sent = sum(r.frames_sent for r in reports)
    frames_in = m1.get("vbgw_frames_total", 0) - m0.get("vbgw_frames_total", 0)
    dropped_s = m1.get("vbgw_engine_dropped_audio_seconds", 0) - m0.get("vbgw_engine_dropped_audio_seconds", 0)
    late = sum(1 for x in rtts if x > LATE_PONG_S)
    violations = sum(len(r.violations) for r in reports)
    not_ok = sum(not r.ok for r in reports)
    return {"sessions": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cpu_per_call": round(cpu / wall / n, 4) if n else 0.0, "client_cpu_s": round(client_cpu, 1),
            "pongs": len(rtts), "pong_p50_ms": round((_pct(rtts, 0.5) or 0) * 1000, 1),
            "pong_p99_ms": round((_pct(rtts, 0.99) or 0) * 1000, 1),
            "pong_max_ms": round(max(rtts, default=0) * 1000, 1), "late_pongs": late,
            "frames_sent": frames_sent, "frames_received_per_channel": frames_in / 2,
            "engine_dropped_audio_s": dropped_s, "violations": violations, "failed_sessions": not_ok,
            "open_p99_ms": round((_pct([r.open_latency_s for r in reports if r.open_latency_s], 0.99) or 0) * 1000, 1),
            "close_p99_ms": round((_pct([r.close_latency_s for r in reports if r.close_latency_s], 0.99) or 0)
                                  * 1000, 1),
            "normal_delay_p95_s_bucket": _p95_from_metrics(text, "vbgw_normal_result_delay_seconds"),
            "passed": late == 0 and dropped_s == 0 and frames_in / 2 >= frames_sent and violations == 0
            and not_ok == 0}


async def amain(args) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="vbgw-bench-ah-"))
    server = Server(data_dir, args)
    pat = server.admin_bootstrap()
    org = _add_org(server)
    await server.start()
    url, ws_url = f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}"
    try:
        calls = _call_audio(args.protocol, args.seconds)
        if not await enrol_bench_user(url, ws_url, pat, args.protocol):
            return 1
        return await sweep(args, lambda n: run_level(n, args, url, ws_url, org, calls, server),
                           f"no late pong (> {LATE_PONG_S:g} s), no dropped audio and no violation")
    finally:
        server.stop()
        await drop_cluster_schema(server.env)


def main(args) -> int:
    return asyncio.run(amain(args))
