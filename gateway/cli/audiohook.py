"""The `vbgw audiohook ...` and `vbgw audiohook-sim` command lines. Argument definitions only;
the implementations are imported when a command runs, so other commands stay quick."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.cli.common import announce_store, utc_when

SIM_FAULTS = ("bad_signature", "stale_signature", "no_signature", "wrong_org", "seq_gap", "bad_serverseq",
              "audio_before_open", "odd_frame", "oversized_frame", "no_pings", "client_error", "drop")


async def cli_add_org(args, settings) -> int:
    """`vbgw audiohook add-org`: issue an API key (and client secret) for a Genesys organisation."""
    from connectors.audiohook import is_uuid
    from gateway.services.audiohook_orgs import SecretBox, add_org, print_instructions
    from gateway.services.auth import load_or_create_secret
    from gateway.store.base import Conflict
    from gateway.store.factory import open_repository
    if not is_uuid(args.org_id):
        print(f"error: --org-id must be the Genesys organization id (a UUID), got {args.org_id!r}", file=sys.stderr)
        return 2
    announce_store(settings, "audiohook")
    store = await open_repository(settings)
    try:
        box = SecretBox(load_or_create_secret(settings.data_dir, settings.auth.hash_secret.get_secret_value()))
        org, api_key, secret = await add_org(store, box, args.org_id, args.tenant, args.profile,
                                             with_secret=not args.no_secret, rotate=args.rotate)
        tenant = await store.get_tenant(org.tenant_id)
        profile = await store.get_profile(org.tenant_id, org.profile_id) if org.profile_id else None
    except Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    host = args.public_host or "<public host of the gateway>"
    print_instructions(org, tenant.name if tenant else org.tenant_id, profile.name if profile else None,
                       api_key, secret, f"wss://{host}{settings.audiohook.path}")
    return 0


async def cli_list_orgs(args, settings) -> int:
    """`vbgw audiohook list`: the organisations allowed to stream, never their credentials."""
    from gateway.store.factory import open_repository
    announce_store(settings, "audiohook")
    store = await open_repository(settings)          # the configured store, SQLite or PostgreSQL
    try:
        print("org_id\ttenant\tdefault_profile\trequests\tcreated")
        for org in await store.list_audiohook_orgs():
            tenant = await store.get_tenant(org.tenant_id)
            profile = await store.get_profile(org.tenant_id, org.profile_id) if org.profile_id else None
            print("\t".join([org.org_id, tenant.name if tenant else org.tenant_id, profile.name if profile else "-",
                             "signed" if org.secret_enc else "unsigned", utc_when(org.created_ms)]))
    finally:
        await store.close()
    return 0


async def cli_remove_org(args, settings) -> int:
    """`vbgw audiohook remove --org-id ID`: the organisation's credentials stop working at once."""
    from gateway.store.factory import open_repository
    announce_store(settings, "audiohook")
    store = await open_repository(settings)
    try:
        removed = await store.delete_audiohook_org(args.org_id.lower())
    finally:
        await store.close()
    if not removed:
        print(f"error: no AudioHook organization {args.org_id!r} (see `vbgw audiohook list`)", file=sys.stderr)
        return 2
    print(f"removed AudioHook organization {args.org_id.lower()}: new sessions with its API key are refused "
          "(open ones run to their end); remove or deactivate the integration in Genesys Cloud too")
    return 0


def add_cli(sub, settings_of) -> None:
    """The `audiohook` and `audiohook-sim` subcommands."""
    ah = sub.add_parser("audiohook", help="Genesys AudioHook organisations")
    ah.add_argument("--data-dir")
    asub = ah.add_subparsers(dest="audiohook_cmd", required=True)
    a = asub.add_parser("add-org", help="issue an API key and client secret for a Genesys organization; the "
                                        "last two lines are api_key=<key> and client_secret=<base64 secret>")
    a.add_argument("--org-id", required=True, help="Genesys Cloud organization id (UUID)")
    a.add_argument("--tenant", help="vbgw tenant (created if missing; default: a tenant named after the org id)")
    a.add_argument("--profile", help="default VB profile of the org's calls (must exist in the tenant)")
    a.add_argument("--no-secret", action="store_true", help="no client secret: accept unsigned requests")
    a.add_argument("--rotate", action="store_true", help="replace the credentials of an existing organization")
    a.add_argument("--public-host", help="host[:port] Genesys connects to, for the printed Connection URI")
    a.set_defaults(fn=lambda args: asyncio.run(cli_add_org(args, settings_of(args))))
    ls = asub.add_parser("list", help="the organizations allowed to stream (never their credentials)")
    ls.set_defaults(fn=lambda args: asyncio.run(cli_list_orgs(args, settings_of(args))))
    rm = asub.add_parser("remove", help="remove an organization: its API key is refused from now on")
    rm.add_argument("--org-id", required=True, help="Genesys Cloud organization id (UUID)")
    rm.set_defaults(fn=lambda args: asyncio.run(cli_remove_org(args, settings_of(args))))

    s = sub.add_parser("audiohook-sim", help="AudioHook client simulator (behaves like Genesys Cloud)")
    add_sim_arguments(s)
    s.set_defaults(fn=_sim_main)


def _sim_main(args) -> int:
    from tools import audiohook_sim
    return audiohook_sim.main(args)


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE.wav",
                   help="call audio: mono = customer; stereo = left customer (external), right agent (internal)")
    p.add_argument("--uri", required=True, help="e.g. wss://vbgw.example.com/audiohook/ws")
    p.add_argument("--api-key", required=True)
    p.add_argument("--client-secret", default=None, help="base64; omit for unsigned requests")
    p.add_argument("--org-id", required=True, help="Genesys organization id (UUID)")
    p.add_argument("--conversation-id", help="conversationId = masterId (default: a random UUID per session)")
    p.add_argument("--ani", default="", help="participant ani")
    p.add_argument("--custom-config", type=json.loads, default=None, help="customConfig JSON object")
    p.add_argument("--fast", action="store_true", help="send audio as fast as possible instead of in real time")
    p.add_argument("--speed", type=float, default=1.0, help="pacing factor (2 = twice real time)")
    p.add_argument("--mono", action="store_true", help="offer only mono PCMU (external)")
    p.add_argument("--pause-at", type=float, help="client-initiated pause at this many seconds")
    p.add_argument("--pause-for", type=float, default=2.0)
    p.add_argument("--discard-at", type=float, help="discard audio at this many seconds")
    p.add_argument("--discard", type=float, default=1.0, help="seconds discarded")
    p.add_argument("--probe", action="store_true", help="a connection probe (null UUIDs, no audio)")
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--rate", type=float, default=1.0, help="sessions started per second")
    p.add_argument("--fault", action="append", default=[], choices=SIM_FAULTS, help="misbehave on purpose")
    p.add_argument("--json", action="store_true", help="one JSON line per session")
    r = p.add_argument_group("verification outcome", "read back from the gateway's REST API after each call")
    r.add_argument("--pat", help="a personal access token of the calls' VB profile's group")
    r.add_argument("--tenant", help="tenant name or id")
    r.add_argument("--profile", help="VB profile name or id")
    r.add_argument("--users", help="comma-separated user ids to verify each call against (default: "
                                   "customConfig's userIds)")
