"""The `vbgw nice ...` command lines (NICE CXone business units). Argument definitions only;
the implementations are imported when a command runs, so other commands stay quick."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.cli.common import announce_store, utc_when


async def cli_add_bu(args, settings) -> int:
    """`vbgw nice add-bu`: issue the API key of a NICE CXone business unit."""
    from gateway.services.nice_units import BU_ID, add_bu, print_instructions
    from gateway.store.base import Conflict
    from gateway.store.factory import open_repository
    if not BU_ID.match(args.bu_id):
        print(f"error: --bu-id must be the CXone business unit number (letters, digits, '.', '_', '-'), "
              f"got {args.bu_id!r}", file=sys.stderr)
        return 2
    announce_store(settings, "nice")
    store = await open_repository(settings)
    try:
        bu, api_key = await add_bu(store, args.bu_id, args.tenant, args.profile, rotate=args.rotate)
        tenant = await store.get_tenant(bu.tenant_id)
        profile = await store.get_profile(bu.tenant_id, bu.profile_id) if bu.profile_id else None
    except Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    host = args.public_host or "<public host of the gateway>"
    cfg = settings.nice
    print_instructions(bu, tenant.name if tenant else bu.tenant_id, profile.name if profile else None, api_key,
                       f"wss://{host}{cfg.path}", cfg.header, f"https://{host}/nice/agent")
    return 0


async def cli_list_bus(args, settings) -> int:
    """`vbgw nice list`: the business units allowed to stream, never their keys."""
    from gateway.store.factory import open_repository
    announce_store(settings, "nice")
    store = await open_repository(settings)
    try:
        print("bu_id\ttenant\tdefault_profile\tcreated")
        for bu in await store.list_nice_bus():
            tenant = await store.get_tenant(bu.tenant_id)
            profile = await store.get_profile(bu.tenant_id, bu.profile_id) if bu.profile_id else None
            print("\t".join([bu.bu_id, tenant.name if tenant else bu.tenant_id, profile.name if profile else "-",
                             utc_when(bu.created_ms)]))
    finally:
        await store.close()
    return 0


async def cli_revoke_bu(args, settings) -> int:
    """`vbgw nice revoke --bu-id ID`: the unit's API key is refused from now on."""
    from gateway.store.factory import open_repository
    announce_store(settings, "nice")
    store = await open_repository(settings)
    try:
        removed = await store.delete_nice_bu(args.bu_id)
    finally:
        await store.close()
    if not removed:
        print(f"error: no NICE business unit {args.bu_id!r} (see `vbgw nice list`)", file=sys.stderr)
        return 2
    print(f"revoked NICE business unit {args.bu_id}: new sockets with its API key are refused (open ones run "
          "to their end); remove the key from the CAAE app too")
    return 0


def add_cli(sub, settings_of) -> None:
    """The `nice` subcommand."""
    n = sub.add_parser("nice", help="NICE CXone business units (CAAE audio relay)")
    n.add_argument("--data-dir")
    nsub = n.add_subparsers(dest="nice_cmd", required=True)
    a = nsub.add_parser("add-bu", help="issue the API key of a CXone business unit; the last three lines are "
                                       "endpoint=<wss URL>, header=<header name> and api_key=<key>")
    a.add_argument("--bu-id", required=True, help="CXone business unit number")
    a.add_argument("--tenant", help="vbgw tenant (created if missing; default: a tenant named nice-<bu id>)")
    a.add_argument("--profile", help="default VB profile of the unit's contacts (must exist in the tenant)")
    a.add_argument("--rotate", action="store_true", help="replace the API key of an existing business unit")
    a.add_argument("--public-host", help="host[:port] CXone connects to, for the printed endpoint")
    a.set_defaults(fn=lambda args: asyncio.run(cli_add_bu(args, settings_of(args))))
    ls = nsub.add_parser("list", help="the business units allowed to stream (never their keys)")
    ls.set_defaults(fn=lambda args: asyncio.run(cli_list_bus(args, settings_of(args))))
    rm = nsub.add_parser("revoke", help="revoke a business unit's API key")
    rm.add_argument("--bu-id", required=True)
    rm.set_defaults(fn=lambda args: asyncio.run(cli_revoke_bu(args, settings_of(args))))

    s = sub.add_parser("nice-sim", help="NICE CXone audio relay simulator (behaves like CXone's CAAE app) and probe",
                       description="Streams WAV files as NICE CXone's Custom Agent Assist Endpoint app does: per "
                                   "contact a TX and an RX socket (or MIX), the initial message, 20 ms mu-law "
                                   "messages in real time, hold/resume, faults; prints each contact's outcome and, "
                                   "with --pat, what its agent panel sees. --probe checks the endpoint and the key "
                                   "in one line. docs/nice-sim.md")
    add_sim_arguments(s)
    s.set_defaults(fn=_sim_main)


def _sim_main(args) -> int:
    from tools import nice_sim
    return nice_sim.main(args)


# The simulator's misbehaviours (tools/nice_sim.py acts them out), with what each does.
NICE_SIM_FAULTS = {
    "bad_handshake": "the first message is not JSON",
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


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE.wav",
                   help="one contact per file: mono = the contact (TX only); stereo = a NICE recording, agent and "
                        "contact, the contact on --customer-channel (TX), the agent on the other (RX)")
    p.add_argument("--uri", "--endpoint", required=True,
                   help="the Audio Relay Endpoint (the endpoint= line of `vbgw nice add-bu`), e.g. "
                        "wss://vbgw.example.com/nice/ws; ws://127.0.0.1:8080/nice/ws locally")
    p.add_argument("--api-key", help="the business unit's key (the api_key= line of `vbgw nice add-bu`)")
    p.add_argument("--header", default="X-Api-Key", help="the header the key goes in (the header= line; nice.header)")
    p.add_argument("--auth", choices=("header", "bearer", "query"), default="header",
                   help="where the key goes: --header, Authorization: Bearer, or ?token=")
    p.add_argument("--contact-id", help="the master contact id (default: a random one per contact; with several "
                                        "contacts, ID-1 ... ID-N)")
    p.add_argument("--ani", default="", help="the caller's number, sent as scriptParams.Ani (the fallback user id)")
    p.add_argument("--script-params", type=json.loads, default=None, help="scriptParams JSON object")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="one more script parameter (a biokey such as user_id=cust-1, or vbProfile=NAME); repeatable")
    p.add_argument("--bu-id", help="businessUnit in the initial message (informational)")
    p.add_argument("--customer-channel", type=int, choices=(0, 1), default=1,
                   help="stereo files: the contact's channel (default 1, right: NICE recordings put the agent left)")
    p.add_argument("--perspectives", help="sockets per contact, comma-separated: TX,RX (default for stereo files), "
                                          "TX (default for mono files), RX or MIX")
    p.add_argument("--mix", action="store_true", help="one MIX socket with both voices summed (--perspectives MIX)")
    p.add_argument("--fast", action="store_true", help="send audio as fast as possible instead of in real time")
    p.add_argument("--speed", type=float, default=1.0, help="pacing factor (2 = twice real time)")
    p.add_argument("--frame-ms", type=int, default=20, help="audio per message (CXone: 20 ms, 160 bytes)")
    p.add_argument("--shape", choices=("binary", "media", "audio"), default="binary",
                   help="audio messages: raw binary, {event: media, media: {payload}} or {audio}")
    p.add_argument("--end", choices=("close", "stop", "empty"), default="close",
                   help="how the contact's sockets end: close them (as CXone does; the gateway closes the call "
                        "nice.resume_idle_s later), a stop event or an empty message (final results at once)")
    p.add_argument("--hold-at", type=float, help="put the contact on hold at this many seconds: every socket closes")
    p.add_argument("--hold-for", type=float, default=2.0, help="seconds on hold before new sockets resume it")
    p.add_argument("--probe", action="store_true",
                   help="check the endpoint and key: one TX socket, no audio, a stop event; one line")
    p.add_argument("--calls", "--contacts", type=int, default=0,
                   help="contacts to simulate (default: one per file; files are used in turn)")
    p.add_argument("--rate", type=float, default=1.0, help="contacts started per second (0: all at once)")
    p.add_argument("--fault", action="append", default=[], choices=tuple(NICE_SIM_FAULTS), metavar="FAULT",
                   help="misbehave on purpose (repeatable): "
                        + "; ".join(f"{k}: {v}" for k, v in NICE_SIM_FAULTS.items()))
    p.add_argument("--json", action="store_true", help="one JSON line per contact")
    r = p.add_argument_group("results", "what each contact's agent panel sees: a session token per contact "
                                        "(POST /api/token/, masterId = the contact id), passed in the script "
                                        "parameters as vbgwToken as a Studio REST action does, followed on "
                                        "Socket.IO; then each contact's verification read back from the REST API")
    r.add_argument("--pat", help="a personal access token of the contacts' VB profile's group")
    r.add_argument("--tenant", help="tenant name or id")
    r.add_argument("--profile", help="VB profile name or id")
    r.add_argument("--users", help="comma-separated user ids to read each contact's verification for (default: the "
                                   "normalised --ani, as the automatic verification does)")
    r.add_argument("--results-wait", type=float, default=15.0,
                   help="after a stop or empty end, seconds to wait for the call's final results (default 15)")
