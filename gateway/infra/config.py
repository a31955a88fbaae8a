"""Configuration: config/default.toml, an optional file over it, then VBGW_* environment
overrides (VBGW_SECTION__KEY=value), validated by pydantic. A bad value stops start-up with
a message that names the key."""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from connectors.audiohook import AudioHookConfig
from connectors.nice import NiceConfig
from engine.config import EngineConfig
from gateway.events.sinks import EventsConfig
from gateway.infra.fetch import FetchConfig
from gateway.services.recordings.config import RecordingsConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "default.toml"
ENV_PREFIX = "VBGW_"


class ConfigError(Exception):
    """Raised with a message naming the offending key; the CLI prints it and exits 2."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_json_bytes: int = Field(default=64 * 1024, ge=256)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    data_dir: Path = Path("var")
    # Limits on idle, slow and never-reading clients (gateway/web/limits.py, docs/security.md).
    keepalive_timeout_s: float = Field(default=30.0, gt=0)
    body_timeout_s: float = Field(default=120.0, gt=0)
    send_timeout_s: float = Field(default=30.0, ge=0)
    first_message_timeout_s: float = Field(default=10.0, gt=0)
    socketio_auth_timeout_s: float = Field(default=30.0, gt=0)
    max_connections_per_client: int = Field(default=256, ge=0)
    # "uvloop" (the default; asyncio's own loop where uvloop is not installed, with a log
    # line) or "asyncio" (gateway/infra/eventloop.py).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="before")
    @classmethod
    def _empty_paths_are_none(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("tls_cert", "tls_key"):
                if data.get(key) == "":
                    data[key] = None
        return data

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServerConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        for p in (self.tls_cert, self.tls_key):
            if p is not None and not p.is_file():
                raise ValueError(f"TLS file not found: {p}")
        return self


class StorageConfig(_Section):
    sqlite_path: Path = Path("vbgw.sqlite3")
    # postgresql://user:password@host:port/database selects the PostgreSQL store; empty: SQLite.
    dsn: SecretStr = SecretStr("")
    pg_schema: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,62})?$")   # empty: the server's search_path
    pool_min: int = Field(default=1, ge=0, le=100)
    pool_max: int = Field(default=10, ge=1, le=1000)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    retry_s: float = Field(default=10.0, ge=0)            # a call retries a lost connection this long, then fails
    reconnect_max_s: float = Field(default=30.0, gt=0)    # longest pause between attempts to reach the database

    @model_validator(mode="after")
    def _postgres_dsn(self) -> "StorageConfig":
        dsn = self.dsn.get_secret_value()
        if dsn and not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("storage.dsn must be a postgresql:// URL (or empty for the embedded SQLite store)")
        if self.pool_min > self.pool_max:
            raise ValueError("storage.pool_min must not exceed storage.pool_max")
        return self

    @property
    def postgres(self) -> bool:
        return bool(self.dsn.get_secret_value())


class EncryptionConfig(_Section):
    """Encryption at rest of voiceprints and fingerprints (docs/security.md)."""
    # Base64 AES-256 keys separated by commas, the active one first (VBGW_ENCRYPTION__KEYS);
    # when set, keys_file is not read.
    keys: SecretStr = SecretStr("")
    # One base64 key per line, active first; relative to server.data_dir. Created with one new
    # key on first start with SQLite; with PostgreSQL it must be provided (instances share it).
    keys_file: Path = Path("data.keys")
    reload_s: float = Field(default=5.0, gt=0)            # how often the gateway looks for a rotated keys file


class AuthConfig(_Section):
    token_idle_s: int = Field(default=3600, ge=10)
    hash_secret: SecretStr = SecretStr("")


class DialogsConfig(_Section):
    retain_after_close_s: float = Field(default=900, ge=0)
    max_frame_bytes: int = Field(default=65536, ge=320)


class ProfileDefaults(_Section):
    enrol_min_speech_ms: int = Field(default=10000, ge=1000)
    verify_min_speech_ms: int = Field(default=5000, ge=500)
    early_speech_ms: int = Field(default=2000, ge=500)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class FraudConfig(_Section):
    """Fraud signals (docs/fraud-signals.md)."""
    # A blocklist entry matches when the call's llr against it reaches the threshold at which
    # this share of other speakers would match (calibration tails; see docs/benchmarks.md).
    blocklist_far: float = Field(default=0.0005, gt=0, lt=0.5)
    tts_enabled: bool = True
    tts_weights: str = ""                  # empty: engine/data/tts-detector.npz
    tts_threshold: float | None = Field(default=None, ge=0, le=1)   # None: the one shipped with the weights
    # Replay detection (PAD TypeA) covers every verification of the last
    # verify_fingerprint_retention_s, at most keep_verify_fingerprints per user (the most recent).
    keep_verify_fingerprints: int = Field(default=1000, ge=1, le=100000)
    verify_fingerprint_retention_s: float = Field(default=90 * 86400.0, gt=0)
    # Users' stored fingerprints kept unpacked and indexed between PAD checks, least recently
    # used out first (gateway/services/stored_prints.py; 12 bytes per stored hash, ~18 KB per 40 s of speech).
    fingerprint_cache_mb: int = Field(default=64, ge=0, le=65536)


class UploadsConfig(_Section):
    """Uploaded audio files (batch enrolment, blocklist fraudsters; docs/security.md)."""
    # Longest recording accepted (413 AUDIO_TOO_LONG, from the WAV header, before decoding).
    max_audio_s: float = Field(default=1800.0, gt=0)
    # Files analysed at once; further uploads wait their turn (each in flight holds a few
    # seconds of decoded audio, its voiceprint windows and fingerprint, whatever its length).
    max_concurrent: int = Field(default=2, ge=1, le=64)


class AculabCostsConfig(_Section):
    """The price of each Aculab Users API call, in US dollars (Aculab's cost unit), answered
    by `application_status` (docs/aculab-users-api.md, issue #16 item 6)."""
    register_usd: float = Field(default=0.0, ge=0, le=1000)
    update_usd: float = Field(default=0.0, ge=0, le=1000)
    verify_usd: float = Field(default=0.0, ge=0, le=1000)
    keep_s: float = Field(default=90 * 86400.0, gt=0)    # how long a call's cost can be asked for


class AculabConfig(_Section):
    """Aculab Users API defaults (docs/aculab-users-api.md "Speech minimums"); a user group key
    may set its own (`vbgw admin user-group-key --register-min-speech-s ...`). Net speech (VAD),
    in ms; the bounds are the shortest lengths measured (docs/benchmarks.md "Speech length")."""
    register_min_speech_ms: int = Field(default=4000, ge=4000, le=60000)
    update_min_speech_ms: int = Field(default=1000, ge=1000, le=60000)
    verify_min_speech_ms: int = Field(default=1000, ge=1000, le=60000)


class ClusterConfig(_Section):
    """Several gateway instances behind a load balancer (docs/scale-out.md). "single" (the
    default): one process, everything in memory and the embedded store, as for `make run`.
    "shared": the store is PostgreSQL (storage.dsn), results fan out through Redis
    (redis_url), a call directory in Redis names the instance that owns each call (a lease
    renewed while the call lives), and REST calls that need a call's audio state are forwarded
    to its owner at its advertised internal URL, signed with the shared cluster secret."""
    mode: Literal["single", "shared"] = "single"
    # This instance's name in the call directory; empty: <host name>-<server.port>.
    instance_id: str = Field(default="", pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$")
    # How the other instances reach this one (no load balancer in between); empty:
    # http://<server.host>:<server.port>.
    advertise_url: str = ""
    redis_url: SecretStr = SecretStr("")
    # Prefix of every Redis key and channel of this cluster (several clusters may share a Redis).
    redis_prefix: str = Field(default="vbgw", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    # Signs the requests instances send each other (at least 32 characters; the same everywhere).
    secret: SecretStr = SecretStr("")
    # An owner's directory entry lives this long unless renewed: how long after an instance
    # died its calls are declared lost to the agents following them on other instances.
    lease_s: float = Field(default=6.0, ge=1.0, le=300.0)
    # Results queued for Redis while it is unreachable (the oldest are dropped beyond it).
    max_pending: int = Field(default=10000, ge=100)
    forward_timeout_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _urls(self) -> "ClusterConfig":
        if self.advertise_url and not self.advertise_url.startswith(("http://", "https://")):
            raise ValueError("cluster.advertise_url must be an http:// or https:// URL")
        url = self.redis_url.get_secret_value()
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("cluster.redis_url must be a redis://, rediss:// or unix:// URL")
        return self

    @property
    def shared(self) -> bool:
        return self.mode == "shared"


class Settings(_Section):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    auth: AuthConfig = AuthConfig()
    dialogs: DialogsConfig = DialogsConfig()
    profile_defaults: ProfileDefaults = ProfileDefaults()
    engine: EngineConfig = EngineConfig()
    events: EventsConfig = EventsConfig()
    logging: LoggingConfig = LoggingConfig()
    audiohook: AudioHookConfig = AudioHookConfig()
    nice: NiceConfig = NiceConfig()
    fraud: FraudConfig = FraudConfig()
    uploads: UploadsConfig = UploadsConfig()
    fetch: FetchConfig = FetchConfig()
    aculab: AculabConfig = AculabConfig()
    recordings: RecordingsConfig = RecordingsConfig()
    aculab_costs: AculabCostsConfig = AculabCostsConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _shared_cluster(self) -> "Settings":
        """Shared mode needs what every instance must share: the PostgreSQL store, Redis, the
        cluster secret, and auth.hash_secret (else each instance would generate its own and
        the keyed hashes of biokeys would differ from one instance to the next)."""
        c = self.cluster
        if not c.shared:
            return self
        missing = [what for what, ok in (
            ("storage.dsn (a postgresql:// URL: instances share the PostgreSQL store)", self.storage.postgres),
            ("cluster.redis_url (results fan out and the call directory live in Redis)",
             bool(c.redis_url.get_secret_value())),
            ("cluster.secret (at least 32 characters, the same on every instance)",
             len(c.secret.get_secret_value()) >= 32),
            ("auth.hash_secret (the same on every instance)", bool(self.auth.hash_secret.get_secret_value())),
        ) if not ok]
        if not c.advertise_url and self.server.port == 0:
            missing.append("cluster.advertise_url (server.port is 0: the other instances cannot guess it)")
        if missing:
            raise ValueError("cluster.mode = \"shared\" requires " + "; ".join(missing))
        return self

    @model_validator(mode="after")
    def _paths_under_data_dir(self) -> "Settings":
        """Everything the gateway writes lives under server.data_dir: relative events paths
        are taken from it (not from the working directory), and files derived from the
        models go to <data_dir>/cache unless engine.cache_dir says otherwise."""
        d = self.server.data_dir
        ev = {k: d / getattr(self.events, k) for k in ("jsonl_path", "outbox_path", "nats_outbox_path", "redis_outbox_path")
              if not getattr(self.events, k).is_absolute()}
        if ev:
            self.events = self.events.model_copy(update=ev)
        if self.engine.cache_dir is None:
            self.engine = self.engine.model_copy(update={"cache_dir": d / "cache"})
        return self

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def cluster_instance_id(self) -> str:
        """This instance's name in the call directory (cluster.instance_id, else host-port)."""
        import socket
        return self.cluster.instance_id or f"{socket.gethostname()}-{self.server.port}"

    @property
    def cluster_url(self) -> str:
        """Where the other instances reach this one (cluster.advertise_url, else host:port)."""
        return (self.cluster.advertise_url or f"http://{self.server.host}:{self.server.port}").rstrip("/")

    @property
    def sqlite_path(self) -> Path:
        p = self.storage.sqlite_path
        return p if p.is_absolute() else self.server.data_dir / p


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_value(raw: str) -> Any:
    """Environment values are JSON when they parse as JSON (numbers, lists, booleans), else text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# VBGW_ variables that are not configuration keys (read where they are used).
OTHER_ENV = {
    "VBGW_MODEL_DIR": "model files directory (engine.model_dir's default)",
    "VBGW_BENCH_BUS_TAP": "benchmarks only",
    "VBGW_UPDATE_SCREENSHOT": "tests only",
    "VBGW_REQUIRE_SERVICES": "tests only: a missing PostgreSQL/Redis/NATS fails instead of skipping (.ci/run)",
    "VBGW_TEST_PG_DSN": "tests only (tests/services.py)",
    "VBGW_TEST_REDIS_URL": "tests only (tests/services.py)",
    "VBGW_TEST_NATS_URL": "tests only (tests/services.py)",
}


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per VBGW_ variable that is neither VBGW_<SECTION>__<KEY> nor in OTHER_ENV
    (e.g. VBGW_SERVER_PORT, one underscore: silently ignored otherwise), with the key it
    most likely meant. Unknown keys *with* a double underscore are errors (load_settings)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    out = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" in name or name in OTHER_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        guess = None
        for section, field in Settings.model_fields.items():
            sub = getattr(field.annotation, "model_fields", {})
            if rest.startswith(section + "_") and rest[len(section) + 1:] in sub:
                guess = f"{ENV_PREFIX}{section.upper()}__{rest[len(section) + 1:].upper()}"
        hint = f"; did you mean {guess}?" if guess else f" (settings are {ENV_PREFIX}<SECTION>__<KEY>)"
        out.append(f"ignoring unknown environment variable {name}{hint}")
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> dict:
    env: Mapping[str, str] = os.environ if environ is None else environ
    out: dict = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _env_value(raw)
    return out


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None,
                  overrides: dict | None = None) -> Settings:
    data: dict = {}
    for p in (DEFAULT_CONFIG, path):
        if p is None:
            continue
        try:
            data = _merge(data, tomllib.loads(Path(p).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    data = _merge(data, env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(root)"
            lines.append(f"config key {key}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
