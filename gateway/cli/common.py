"""What the admin commands share (the store they work on, how they print times): its own module so
that the subcommand modules (audiohook, blocklist, ...) and main import it, not each other."""
from __future__ import annotations

import sys

from gateway.infra.config import Settings


def announce_store(settings: Settings, command: str) -> None:
    """Say which installation a command works on (stderr: stdout stays parseable). An admin
    command run without the gateway's config or VBGW_ variables would otherwise quietly
    work on another database."""
    if settings.storage.postgres:
        from gateway.store.postgres import redact_dsn
        database = redact_dsn(settings.storage.dsn.get_secret_value()) + (
            f" (schema {settings.storage.pg_schema})" if settings.storage.pg_schema else "")
    else:
        database = str(settings.sqlite_path.resolve())
    print(f"vbgw {command}: data dir {settings.data_dir.resolve()}, database {database}", file=sys.stderr, flush=True)


def utc_when(ms: int) -> str:
    """A store's epoch milliseconds as the UTC timestamp the listings print."""
    import datetime
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
