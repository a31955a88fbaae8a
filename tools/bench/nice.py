"""`vbgw bench nice --sessions N`: N concurrent NICE CXone contacts against a gateway started in
a subprocess, each as CXone's CAAE audio relay streams it (the simulator, tools/nice_sim.py):
two sockets per contact, TX (the customer's speech) and RX (the agent's audio: another
speaker's call), 20 ms raw mu-law messages paced in real time, the business unit's API key in
the header, script parameters naming the enrolled caller (user_id), so every contact is verified
with no agent action, as on a NICE call.

The measurement is the direct-stream bench's (tools/bench/stream.py): contacts start evenly over
a ramp of one call length and each makes `--calls-per-contact` calls back to back (new sockets
and a new contact id each), so N contacts run at once after the ramp; figures cover that steady
part. A level passes when the engine keeps up (backlog, audio received but not yet through the
VAD, under 2 s per contact at worst and no growth from the first third of the steady part to
the last), no audio was dropped (every frame sent reached the dialogs and the engine dropped
none), no socket failed or saw a protocol violation, and the gateway-side delay from the audio
that completed the speech threshold to the NORMAL result has a p95 under 1 s in steady state.
Reports the largest passing N (with --sweep: 25, 50, 75, 100 % of --sessions, a fresh gateway
for each), CPU per contact, the client's own CPU and the acknowledgement latency."""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from tools.bench.audiohook import _pct
from tools.bench.stream import (
    DEFAULT_PROTOCOL, REPO, BenchGateway, SteadyState, _call_audio, _histogram, _parse_metrics, encoder_share,
    fresh_gateway, sweep,
)
from tools.nice_sim import ContactReport, SimOptions, run_contact

BENCH_USER = "bench-user"          # enrolled by enrol_bench_user
MAX_BACKLOG_S = 2.0
NORMAL_P95_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", type=int, default=100,
                   help="concurrent contacts, two sockets each (the largest to try with --sweep)")
    p.add_argument("--sweep", action="store_true", help="try 25%%, 50%%, 75%%, 100%% of --sessions and report the "
                                                       "largest that passes")
    p.add_argument("--seconds", type=float, default=40.0, help="audio seconds per call")
    p.add_argument("--speech-ratio", type=float, default=0.5,
                   help="share of each call that is customer speech on TX (the rest: line noise)")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL,
                   help="trial protocol whose speech the calls carry (tools/protocol.py; default: the in-repo cut)")
    p.add_argument("--ramp", type=float, default=None,
                   help="seconds over which the contacts start (default: one call length)")
    p.add_argument("--calls-per-contact", type=int, default=2,
                   help="calls each contact makes back to back, keeping N contacts running after the ramp")
    p.add_argument("--frame-ms", type=int, default=20, help="audio per message (CXone relays 20 ms: 160 bytes)")


def add_business_unit(data_dir: Path) -> tuple[str, str, str]:
    """`vbgw nice add-bu` for the bench's tenant and profile: (socket path, header, API key),
    read from the three lines the command ends with."""
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "nice", "--data-dir", str(data_dir), "add-bu",
                          "--bu-id", "bench", "--tenant", "bench", "--profile", "bench"],
                         check=True, capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()
    lines = dict(line.split("=", 1) for line in out[-3:])
    return urlsplit(lines["endpoint"]).path, lines["header"], lines["api_key"]


async def run_level(n: int, args, gw: BenchGateway, calls: list[np.ndarray]) -> dict:
    path, header, key = gw.setup
    server = gw.server
    ramp = args.seconds if args.ramp is None else args.ramp
    reports: list[ContactReport] = []
    async with aiohttp.ClientSession() as http:
        steady = SteadyState(http, gw.url, server, ramp, n)
        m0 = _parse_metrics(await steady.metrics_text())
        cpu0, client0 = server.cpu_seconds(), time.process_time()
        steady.start()

        async def contact(i: int) -> None:
            await asyncio.sleep(ramp * i / max(1, n))
            for k in range(args.calls_per_contact):
                o = SimOptions(uri=f"{gw.ws_url}{path}", api_key=key, header=header,
                               contact_id=f"7{n:04d}{i:05d}{k:02d}", perspectives=("TX", "RX"),
                               script_params={"user_id": BENCH_USER}, agent_id=f"bench-agent-{i}",
                               frame_ms=args.frame_ms, speed=1.0, end="stop")
                tx = calls[(i + k) % len(calls)]
                rx = calls[(i + k + 1) % len(calls)]           # the agent: another speaker's turns
                reports.append(await run_contact(o, tx, rx))

        await asyncio.gather(*(contact(i) for i in range(n)))
        cpu, wall = server.cpu_seconds() - cpu0, steady.stop()
        client_cpu = time.process_time() - client0
        await asyncio.sleep(1.0)
        text = await steady.metrics_text()
    m1 = _parse_metrics(text)
    first, last, worst, grew = steady.backlog_per_call(wall)
    sockets = [s for r in reports for s in r.sockets]
    frames_sent = sum(s.frames_sent for s in sockets)
    frames_in = m1.get("vbgw_frames_total", 0) - m0.get("vbgw_frames_total", 0)
    dropped_s = m1.get("vbgw_engine_dropped_audio_seconds", 0) - m0.get("vbgw_engine_dropped_audio_seconds", 0)
    violations = sum(len(s.violations) for s in sockets)
    failed = sum(not r.ok for r in reports)
    p95 = steady.normal_p95(text)
    scoring_p95 = steady.normal_p95(text, "vbgw_normal_scoring_seconds")
    normal = _histogram(text, "vbgw_normal_result_delay_seconds")[1]
    acks = [s.ack_latency_s for s in sockets if s.ack_latency_s is not None]
    return {"sessions": n, "sockets": len(sockets), "ramp_s": ramp, "wall_s": round(wall, 1),
            "server_cpu_s": round(cpu, 1), "server_cores_per_contact": round(cpu / wall / n, 4) if n else 0.0,
            "client_cpu_s": round(client_cpu, 1),
            "backlog_per_contact_s_first_third": round(first, 2),
            "backlog_per_contact_s_last_third": round(last, 2), "backlog_per_contact_s_max": round(worst, 2),
            "backlog_grew": grew, "frames_sent": frames_sent, "frames_received": int(frames_in),
            "encoder_audio_per_audio": encoder_share(m0, m1),
            "dropped_audio_s": dropped_s, "failed_calls": failed, "violations": violations,
            "normal_results": int(normal),
            "normal_result_delay_p95_s_steady": round(p95, 3) if p95 is not None else None,
            "normal_scoring_p95_s_steady": round(scoring_p95, 3) if scoring_p95 is not None else None,
            "ack_p99_ms": round((_pct(acks, 0.99) or 0) * 1000, 1),
            "server_rss_mb_start": round(steady.rss[0]), "server_rss_mb_max": round(max(steady.rss)),
            "passed": (not grew and worst < MAX_BACKLOG_S and dropped_s == 0 and frames_in >= frames_sent
                       and not failed and not violations and p95 is not None and p95 < NORMAL_P95_S)}


async def amain(args) -> int:
    calls = _call_audio(args.protocol, args.seconds, args.speech_ratio)

    async def level(n: int) -> dict:
        async with fresh_gateway(args.protocol, "vbgw-bench-nice-", add_business_unit) as gw:
            return await run_level(n, args, gw, calls)
    try:
        return await sweep(args, level, f"backlog < {MAX_BACKLOG_S:g} s per contact, no growth, no dropped audio, "
                                        f"no failed socket, steady NORMAL p95 < {NORMAL_P95_S:g} s")
    except RuntimeError as exc:                  # bench-user could not be enrolled
        print(exc)
        return 1


def main(args) -> int:
    return asyncio.run(amain(args))
