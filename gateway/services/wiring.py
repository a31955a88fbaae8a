"""The gateway's parts, built once per application and wired to each other by the narrow
collaborators each declares (a dialog its CallServices, verification its store, engine and event
publisher, ...). Route handlers take the part they need from `Services`; no part holds it, so
nothing calls back into the whole."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import structlog

from engine import Engine
from gateway.calls.bus import LocalResultsBus, ResultsBus
from gateway.calls.dialog import CallServices
from gateway.calls.registry import LocalCallRegistry
from gateway.events.publisher import EventPublisher
from gateway.events.sinks import EventSink
from gateway.infra.config import Settings
from gateway.infra.metrics import Metrics
from gateway.services.auth import Keyring
from gateway.services.fraud import FraudService
from gateway.services.sessions import Sessions
from gateway.services.uploads import Uploads
from gateway.services.users import Users
from gateway.services.verification import Verifier
from gateway.store.base import Repository

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Repository
    engine: Engine
    sink: EventSink
    keyring: Keyring
    metrics: Metrics
    bus: ResultsBus
    fraud: FraudService
    events: EventPublisher
    verifier: Verifier
    dialogs: LocalCallRegistry
    sessions: Sessions
    uploads: Uploads
    users: Users


def wire(settings: Settings, store: Repository, engine: Engine, sink: EventSink, keyring: Keyring,
         metrics: Metrics | None = None) -> Services:
    metrics = metrics or Metrics()
    bus: ResultsBus
    if settings.cluster.shared:
        # Several instances (docs/scale-out.md): the bus and the registry over Redis.
        from gateway.calls.cluster import CallDirectory, ClusterCallRegistry, ClusterResultsBus
        incarnation = f"{settings.cluster_instance_id}.{secrets.token_hex(3)}"
        bus = cbus = ClusterResultsBus(settings.cluster.redis_url.get_secret_value(), settings.cluster.redis_prefix,
                                       incarnation, settings.cluster.max_pending)
    else:
        bus = LocalResultsBus()
    fraud = FraudService(settings.fraud, engine, store, bus, metrics)
    events = EventPublisher(sink, settings.events, engine.info, store)
    verifier = Verifier(store, engine, keyring, fraud, events, metrics)
    dialogs: LocalCallRegistry
    if settings.cluster.shared:
        directory = CallDirectory(cbus, settings.cluster_instance_id, settings.cluster_url, settings.cluster.lease_s)
        dialogs = ClusterCallRegistry(CallServices(engine, bus, verifier, fraud, metrics, instance=incarnation),
                                      settings.dialogs.retain_after_close_s, cbus, directory)
    else:
        dialogs = LocalCallRegistry(CallServices(engine, bus, verifier, fraud, metrics),
                                    settings.dialogs.retain_after_close_s)
    sessions = Sessions(store, store, keyring, settings.auth.token_idle_s, dialogs, metrics)
    dialogs.chores = (sessions.purge_expired,)
    uploads = Uploads(engine, settings.uploads.max_audio_s, settings.uploads.max_concurrent)
    users = Users(store, engine, keyring, uploads, events, fraud, sessions, metrics, settings.data_dir)
    return Services(settings, store, engine, sink, keyring, metrics, bus, fraud, events, verifier, dialogs,
                    sessions, uploads, users)


async def store_ready(services: Services) -> None:
    """Start-up checks once the store is open: voiceprints of another model need re-enrolment;
    sensitive biokeys hashed under another auth.hash_secret, and records not sealed under the
    active data key, are reported with the command that fixes them (docs/security.md)."""
    store, eng = services.store, services.engine
    for p in await store.list_profiles():
        n = await store.mark_re_enroll(p.id, eng.info.model, eng.info.extractor_version)
        if n:
            log.warning("users_need_re_enrolment", profile_id=p.id, users=n)
    await services.users.reconcile_files()       # kept audio vs rows after a crash; owner-only modes
    usage = await store.hash_key_usage()
    if any(u.key_id is None for u in usage):
        # Hashes from before key ids were kept: assume today's secret made them (it is the one
        # they were made with unless the secret was changed before this upgrade).
        await store.stamp_legacy_hashes(services.keyring.key_id)
    other = [u for u in usage if u.key_id not in (None, services.keyring.key_id)]
    if other:
        log.warning("biokey_hashes_under_another_secret", hash_key_id=services.keyring.key_id,
                    other_key_ids=[u.key_id for u in other], rows=sum(u.rows for u in other),
                    rekeyable=sum(u.rekeyable for u in other),
                    fix="vbgw admin rekey-biokeys (searches by these biokeys find nobody until then)")
    keys = store.keys
    if keys is None:
        return
    stale = {t: n for t, per_key in (await store.key_usage()).items()
             for kid, n in per_key.items() if kid != keys.active_id and n}
    if stale:
        log.warning("records_not_under_active_data_key", active_key_id=keys.active_id, rows=stale,
                    fix="vbgw admin rotate-key --reencrypt-only")
