"""The gateway's parts, built once per application and wired to each other by the narrow
collaborators each declares (a dialog its CallServices, verification its store, engine and event
publisher, ...). Route handlers take the part they need from `Services`; no part holds it, so
nothing calls back into the whole."""
from __future__ import annotations

from dataclasses import dataclass

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
    bus = LocalResultsBus()
    fraud = FraudService(settings.fraud, engine, store, bus, metrics)
    events = EventPublisher(sink, settings.events, engine.info, store)
    verifier = Verifier(store, engine, keyring, fraud, events, metrics)
    dialogs = LocalCallRegistry(CallServices(engine, bus, verifier, fraud, metrics),
                                settings.dialogs.retain_after_close_s)
    sessions = Sessions(store, store, keyring, settings.auth.token_idle_s, dialogs, metrics)
    dialogs.chores = (sessions.purge_expired,)
    uploads = Uploads(engine, settings.uploads.max_audio_s, settings.uploads.max_concurrent)
    users = Users(store, engine, keyring, uploads, events, fraud, sessions, metrics, settings.data_dir)
    return Services(settings, store, engine, sink, keyring, metrics, bus, fraud, events, verifier, dialogs,
                    sessions, uploads, users)
