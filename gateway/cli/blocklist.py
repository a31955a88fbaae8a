"""`vbgw blocklist ...`: manage a group's blocklists from the command line (same store as the
gateway; REST: /api/blocklists). Adding a fraudster from a past call needs the running
gateway (the call lives in its memory): use POST /api/blocklists/{id}/fraudsters/from-dialog."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from gateway.cli.common import announce_store
from gateway.store.base import RISK_LEVELS as RISKS

# The command line reads files an administrator chose on this machine: no upload length limit.
CLI_MAX_AUDIO_S = 7 * 24 * 3600.0


def add_cli(sub, settings_fn) -> None:
    p = sub.add_parser("blocklist", help="blocklists (fraudster voices) of a group")
    p.add_argument("--data-dir")
    p.add_argument("--tenant", required=True, help="tenant name or id")
    p.add_argument("--group", default="default", help="group name (default: default)")
    bsub = p.add_subparsers(dest="bl_cmd", required=True)
    c = bsub.add_parser("create", help="create a list")
    c.add_argument("--name", required=True)
    c.add_argument("--description", default="")
    c.add_argument("--risk", choices=RISKS, default="HIGH_RISK")
    c.add_argument("--ui-message", default="blocklisted")
    c.add_argument("--agent-message", default="Blocklisted voice has been detected")
    c.add_argument("--inactive", action="store_true", help="create it deactivated")
    bsub.add_parser("list", help="the group's lists")
    s = bsub.add_parser("show", help="a list and its fraudster entries")
    s.add_argument("list_id")
    u = bsub.add_parser("set", help="change a list")
    u.add_argument("list_id")
    u.add_argument("--name")
    u.add_argument("--description")
    u.add_argument("--risk", choices=RISKS)
    u.add_argument("--ui-message")
    u.add_argument("--agent-message")
    act = u.add_mutually_exclusive_group()
    act.add_argument("--activate", action="store_true")
    act.add_argument("--deactivate", action="store_true")
    a = bsub.add_parser("add", help="add fraudster voiceprints from WAV files (one entry per file)")
    a.add_argument("list_id")
    a.add_argument("wav", nargs="+")
    a.add_argument("--label", help="label for the entries (default: the file name)")
    r = bsub.add_parser("remove", help="remove a fraudster entry")
    r.add_argument("list_id")
    r.add_argument("entry_id", type=int)
    d = bsub.add_parser("delete", help="delete a list and its voiceprints")
    d.add_argument("list_id")
    p.set_defaults(fn=lambda args: asyncio.run(_main(args, settings_fn(args))))


def _row(b) -> str:
    return (f"{b.id}\t{b.name}\t{b.risk_level}\t{'active' if b.active else 'inactive'}\t{b.entries} fraudsters\t"
            f"{json.dumps(b.description)}")


async def _main(args, settings) -> int:
    from gateway.store.base import Blocklist, Conflict
    from gateway.store.factory import open_repository
    announce_store(settings, "blocklist")
    store = await open_repository(settings)
    engine = None
    try:
        tenant = await store.get_tenant(args.tenant)
        if tenant is None:
            print(f"error: no tenant {args.tenant!r}", file=sys.stderr)
            return 2
        group = await store.ensure_group(tenant.id, args.group)
        gid = group.id
        cmd = args.bl_cmd
        if cmd == "create":
            b = await store.create_blocklist(Blocklist("", tenant.id, gid, args.name, args.description, args.risk,
                                                       args.ui_message, args.agent_message, not args.inactive, 0, 0))
            print(_row(b))
            return 0
        if cmd == "list":
            for b in await store.list_blocklists(gid):
                print(_row(b))
            return 0
        bl = await store.get_blocklist(gid, args.list_id)
        if bl is None:
            print(f"error: no blocklist {args.list_id!r} in group {args.group!r}", file=sys.stderr)
            return 2
        if cmd == "show":
            print(_row(bl))
            print(f"ui message: {bl.custom_ui_message}\nagent message: {bl.custom_agent_message}")
            for e in await store.blocklist_entries(gid, bl.id):
                print(f"  {e.id}\t{e.label}\t{e.source}\t{e.speech_ms} ms\t{e.model}")
        elif cmd == "set":
            changes = {k: v for k, v in (("name", args.name), ("description", args.description),
                                         ("risk_level", args.risk), ("custom_ui_message", args.ui_message),
                                         ("custom_agent_message", args.agent_message)) if v is not None}
            if args.activate or args.deactivate:
                changes["active"] = bool(args.activate)
            if not changes:
                print("error: nothing to change", file=sys.stderr)
                return 2
            print(_row(await store.update_blocklist(gid, bl.id, changes)))
        elif cmd == "add":
            from engine import Engine
            from engine.types import AudioError
            from gateway.errors import ApiError
            from gateway.services.blocklists import add_entry_from_file
            from gateway.services.uploads import Uploads
            engine = Engine.load(settings.engine)
            await engine.start()
            uploads = Uploads(engine, CLI_MAX_AUDIO_S, 1)
            failed = 0
            for path in args.wav:
                try:
                    # the same decoding and embedding as the REST upload (gateway/services/uploads.py)
                    e = await add_entry_from_file(uploads, store, gid, bl.id, Path(path).read_bytes(),
                                                  args.label or Path(path).name, f"wav:{Path(path).name}",
                                                  max_s=CLI_MAX_AUDIO_S)
                    print(f"added {e.id}\t{e.label}\t{e.speech_ms} ms")
                except (AudioError, ApiError, OSError) as exc:
                    failed += 1
                    msg = exc.strerror if isinstance(exc, OSError) else getattr(exc, "message", exc)
                    print(f"error: {path}: {msg}", file=sys.stderr)
            return 2 if failed else 0
        elif cmd == "remove":
            if not await store.delete_blocklist_entry(gid, bl.id, args.entry_id):
                print(f"error: no entry {args.entry_id} in {bl.id}", file=sys.stderr)
                return 2
            print(f"removed {args.entry_id}")
        elif cmd == "delete":
            await store.delete_blocklist(gid, bl.id)
            print(f"deleted {bl.id}")
        return 0
    except Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if engine is not None:
            await engine.stop()
        await store.close()
