"""The `vbgw nice ...` command lines (NICE CXone business units). Argument definitions only;
the implementations are imported when a command runs, so other commands stay quick."""
from __future__ import annotations

import asyncio
import sys


async def cli_add_bu(args, settings) -> int:
    """`vbgw nice add-bu`: issue the API key of a NICE CXone business unit."""
    from gateway.cli.main import announce_store
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
    from gateway.cli.main import _when, announce_store
    from gateway.store.factory import open_repository
    announce_store(settings, "nice")
    store = await open_repository(settings)
    try:
        print("bu_id\ttenant\tdefault_profile\tcreated")
        for bu in await store.list_nice_bus():
            tenant = await store.get_tenant(bu.tenant_id)
            profile = await store.get_profile(bu.tenant_id, bu.profile_id) if bu.profile_id else None
            print("\t".join([bu.bu_id, tenant.name if tenant else bu.tenant_id, profile.name if profile else "-",
                             _when(bu.created_ms)]))
    finally:
        await store.close()
    return 0


async def cli_revoke_bu(args, settings) -> int:
    """`vbgw nice revoke --bu-id ID`: the unit's API key is refused from now on."""
    from gateway.cli.main import announce_store
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
