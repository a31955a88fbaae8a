"""Which repository the configuration asks for, its data keys, and the background work that
keeps it usable: opening a PostgreSQL store that is not reachable yet, and following a keys
file that `vbgw admin rotate-key` changed."""
from __future__ import annotations

import asyncio
import random
from typing import Awaitable, Callable

import structlog

from gateway.store.base import Repository, StoreUnavailable
from gateway.store.keys import DataKeys, KeyConfigError

log = structlog.get_logger(__name__)


def load_data_keys(settings) -> DataKeys:
    """The configured data keys (ConfigError naming the source if they cannot be used)."""
    from gateway.infra.config import ConfigError
    enc = settings.encryption
    try:
        return DataKeys.load(settings.data_dir, enc.keys_file, enc.keys.get_secret_value(),
                             create=not settings.storage.postgres)
    except KeyConfigError as exc:
        raise ConfigError(str(exc)) from None


def build_repository(settings, keys: DataKeys | None = None) -> Repository:
    """The configured store, not yet opened. The PostgreSQL driver is imported only here."""
    keys = keys if keys is not None else load_data_keys(settings)
    st = settings.storage
    if st.postgres:
        from gateway.store.postgres import PostgresRepository
        return PostgresRepository(st.dsn.get_secret_value(), keys, schema=st.pg_schema, pool_min=st.pool_min,
                                  pool_max=st.pool_max, connect_timeout_s=st.connect_timeout_s, retry_s=st.retry_s)
    from gateway.store.sqlite import SqliteRepository
    return SqliteRepository(settings.sqlite_path, keys)


async def open_repository(settings) -> Repository:
    """Build and open the store (command-line tools: they fail at once if it is unreachable)."""
    store = build_repository(settings)
    await store.open()
    return store


async def keep_opening(store: Repository, on_open: Callable[[], Awaitable[None]], max_delay_s: float,
                       first_delay_s: float = 0.5) -> None:
    """Try to open `store` with capped, jittered exponential backoff until it opens, then run
    `on_open`. The caller logged the first failure; retries log at debug level only, so an
    unreachable database is one clear line in the log, plus one when it is reached."""
    delay = first_delay_s
    attempts = 1
    while True:
        await asyncio.sleep(random.uniform(delay / 2, delay))
        attempts += 1
        try:
            await store.open()
        except StoreUnavailable as exc:
            log.debug("database_retry", attempt=attempts, error=str(exc))
            delay = min(max_delay_s, delay * 2)
            continue
        log.info("database_connected", attempts=attempts)
        try:
            await on_open()
        except Exception:
            log.exception("database_startup_checks_failed")
        return


async def watch_keys(keys: DataKeys, every_s: float) -> None:
    """Re-read the keys file when it changes: a rotation elsewhere makes its new key active here."""
    while True:
        await asyncio.sleep(every_s)
        try:
            changed = await asyncio.to_thread(keys.reload)
        except Exception as exc:  # noqa: BLE001 - never let the watcher die; the next round tries again
            log.error("data_keys_reload_failed", error=type(exc).__name__)
            continue
        if changed:
            log.info("data_keys_reloaded", active_key_id=keys.active_id, keys=len(keys.ids))
