"""The `vbgw nice-sim` command line (the NICE CXone audio relay simulator, tools/nice_sim.py).
Argument definitions only; the simulator is imported when the command runs."""
from __future__ import annotations

import argparse
from pathlib import Path

# The simulator's misbehaviours (tools/nice_sim.py acts them out). Kept here, not in tools/, so
# that building the parser imports no tool.
FAULTS = {
    "bad_first_message": "the first message is not JSON",
    "no_contact_id": "the initial message has no contact id",
    "bad_perspective": "streamPerspective is neither TX, RX nor MIX",
    "audio_before_handshake": "audio before the initial message",
    "wrong_key": "a random API key",
    "no_key": "no API key at all",
    "drop": "TX's TCP connection is cut halfway (no close frame); a new socket with the same initial message "
            "carries on at once, as CXone recovers a connection",
    "oversized_frame": "one audio message of 70,000 bytes",
    "bad_base64": "one JSON media message whose payload is not base64",
}


def add_cli(sub) -> None:
    s = sub.add_parser("nice-sim", help="NICE CXone audio relay simulator (behaves like the CAAE app) and probe",
                       description="Streams WAV files as NICE CXone's Custom Agent Assist Endpoint app does: per "
                                   "contact a TX and an RX socket (or MIX), the initial message, 20 ms mu-law "
                                   "frames in real time, hold/resume, faults; prints each contact's outcome and, "
                                   "with --pat, the statuses and results its agent panel sees. --probe checks "
                                   "the endpoint and the API key. docs/nice-sim.md")
    add_sim_arguments(s)
    s.set_defaults(fn=_main)


def _main(args) -> int:
    from tools import nice_sim
    return nice_sim.main(args)


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE.wav",
                   help="one contact per file: mono = the contact (TX; RX is silence); stereo = a NICE recording, "
                        "agent left (RX), contact right (TX)")
    p.add_argument("--endpoint", "--uri", required=True,
                   help="the Audio Relay Endpoint: the endpoint= line of `vbgw nice add-bu`, e.g. "
                        "wss://vbgw.example.com/nice/ws (ws://127.0.0.1:8080/nice/ws locally)")
    p.add_argument("--api-key", help="the business unit's key: the api_key= line of `vbgw nice add-bu`")
    p.add_argument("--header", default="X-Api-Key", help="the header= line of `vbgw nice add-bu` (nice.header)")
    p.add_argument("--auth", choices=("header", "bearer", "query"), default="header",
                   help="where the key travels: --header (default), Authorization: Bearer, or ?token=")
    p.add_argument("--contact-id", help="the master contact id (one contact only; default: a random one per contact)")
    p.add_argument("--perspectives", default="TX,RX", help="sockets per contact: TX,RX (default), MIX, TX or RX")
    p.add_argument("--ani", default="", help="script parameter Ani: the caller's number (the fallback user id)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="another script parameter (a biokey such as user_id=cust-1, or vbProfile=NAME); repeatable")
    p.add_argument("--bu-id", help="businessUnit in the initial message (informational)")
    p.add_argument("--frame-ms", type=int, default=20, help="audio per message (default 20 ms: 160 bytes)")
    p.add_argument("--speed", type=float, default=1.0, help="pacing factor (1 = real time, 2 = twice)")
    p.add_argument("--fast", action="store_true", help="send audio as fast as possible")
    p.add_argument("--shape", choices=("binary", "media", "audio"), default="binary",
                   help="raw binary messages (default), or JSON {event: media} / {audio} with base64")
    p.add_argument("--end", choices=("stop", "close", "empty"), default="stop",
                   help="how each contact's sockets end: a stop event (default: final results at once), a close "
                        "(as hold; the gateway closes the call nice.resume_idle_s later) or an empty message")
    p.add_argument("--hold-at", type=float, help="hold at this many seconds: every socket of the contact closes")
    p.add_argument("--hold-for", type=float, default=5.0,
                   help="seconds on hold before the resume (new sockets, the same initial message)")
    p.add_argument("--contacts", "--sessions", type=int, default=0,
                   help="contacts to simulate (default: one per file; files are reused in turn)")
    p.add_argument("--rate", type=float, default=1.0, help="contacts started per second (0: all at once)")
    p.add_argument("--probe", action="store_true",
                   help="check the endpoint: connect with the key, send an initial message, end it; one line")
    p.add_argument("--fault", action="append", default=[], choices=tuple(FAULTS), metavar="FAULT",
                   help="misbehave on purpose (repeatable): " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()))
    p.add_argument("--json", action="store_true", help="one JSON line per contact")
    r = p.add_argument_group("results", "followed on Socket.IO as the agent panel does, with a session token per "
                                        "contact (POST /api/token/, masterId = the contact id) that is also passed "
                                        "in the script parameters as vbgwToken")
    r.add_argument("--pat", help="a personal access token of the VB profile's group")
    r.add_argument("--tenant", help="tenant name or id (the business unit's)")
    r.add_argument("--profile", help="VB profile name or id (the business unit's default profile)")
    r.add_argument("--users", help="comma-separated user ids to verify (as the agent asks); default: only the "
                                   "automatic verification from the script parameters")
    r.add_argument("--results-wait", type=float, default=15.0,
                   help="seconds to wait after the sockets ended for the call's final results (default 15)")
