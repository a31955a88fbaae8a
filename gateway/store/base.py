"""Storage domain types and the repository interface. SQLite is the embedded default; a
PostgreSQL implementation only has to implement `Repository`."""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field

from typing import Annotated, Collection, Literal, Protocol, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# OCP allows these characters in biokey keys and values.
BIOKEY_RE = re.compile(r"^[0-9A-Za-z_+\-]{1,128}$")
BIOKEY_CHARS_MESSAGE = "use only 0-9 a-z A-Z _ + - (1 to 128 characters)"


def _biokey_chars(v: str) -> str:
    if not BIOKEY_RE.match(v):
        raise ValueError(BIOKEY_CHARS_MESSAGE)
    return v


# A string that may be a biokey key or value, or a user id.
BiokeyStr = Annotated[str, AfterValidator(_biokey_chars)]

USER_STATUSES = ("ENROLLED", "NOT_ENROLLED", "OPTED_OUT", "RE_ENROLL")


class BiokeyDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: BiokeyStr
    is_user_id: bool = False
    sensitive: bool = False


class Bands(BaseModel):
    """Result bands as target error rates (see docs/scoring.md)."""
    model_config = ConfigDict(extra="forbid")
    far_high: float = Field(default=0.0005, gt=0, lt=1)
    far_medium: float = Field(default=0.005, gt=0, lt=1)
    far_low: float = Field(default=0.02, gt=0, lt=1)
    frr_high: float = Field(default=0.005, gt=0, lt=1)
    frr_medium: float = Field(default=0.02, gt=0, lt=1)
    frr_low: float = Field(default=0.10, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Bands":
        if not (self.far_high <= self.far_medium <= self.far_low):
            raise ValueError("need far_high <= far_medium <= far_low")
        if not (self.frr_high <= self.frr_medium <= self.frr_low):
            raise ValueError("need frr_high <= frr_medium <= frr_low")
        return self


def default_biokeys() -> list[BiokeyDef]:
    return [BiokeyDef(key="user_id", is_user_id=True), BiokeyDef(key="Ani")]


class ProfileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enrol_min_speech_ms: int = Field(default=10000, ge=1000)
    verify_min_speech_ms: int = Field(default=5000, ge=500)
    early_speech_ms: int = Field(default=2000, ge=500)
    refine_speech_ms: int = Field(default=5000, ge=1000)
    bands: Bands = Bands()
    biokeys: list[BiokeyDef] = Field(default_factory=default_biokeys)

    @model_validator(mode="after")
    def _consistent(self) -> "ProfileSettings":
        if not self.early_speech_ms <= self.verify_min_speech_ms:
            raise ValueError("early_speech_ms must not exceed verify_min_speech_ms")
        if sum(b.is_user_id for b in self.biokeys) != 1:
            raise ValueError("exactly one biokey must have is_user_id = true")
        if len({b.key for b in self.biokeys}) != len(self.biokeys):
            raise ValueError("biokey keys must be unique")
        return self

    def biokey(self, key: str) -> BiokeyDef | None:
        for b in self.biokeys:
            if b.key == key:
                return b
        return None


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str


@dataclass(frozen=True)
class Group:
    id: str
    tenant_id: str
    name: str


@dataclass(frozen=True)
class Profile:
    id: str
    tenant_id: str
    group_id: str
    name: str
    settings: ProfileSettings


@dataclass(frozen=True)
class Pat:
    id: str
    tenant_id: str
    group_id: str
    name: str


@dataclass(frozen=True)
class SessionRecord:
    token_hash: str
    tenant_id: str
    group_id: str
    profile_id: str
    master_id: str
    agent_id: str
    agent_skill: str
    ccaas_provider: str
    custom_properties: dict
    created_ms: int
    last_used_ms: int


@dataclass(frozen=True)
class StoredBiokey:
    key: str
    value: str          # plain, or the keyed hash for sensitive keys
    sensitive: bool
    # Sensitive keys only, on write: the clear value, which the store keeps only encrypted under
    # the data key (so the hash can be recomputed when auth.hash_secret changes); never returned.
    plain: str | None = field(default=None, repr=False, compare=False)
    hash_key_id: str | None = None    # id of the hash secret the value's HMAC was made with


UserStatus = Literal["ENROLLED", "NOT_ENROLLED", "OPTED_OUT", "RE_ENROLL"]     # the seed's user status


@dataclass(frozen=True)
class User:
    row_id: int
    profile_id: str
    user_id: str
    status: UserStatus
    created_ms: int
    last_update_ms: int
    opt_out_ts: int | None
    opt_in_ts: int | None
    biokeys: tuple[StoredBiokey, ...] = ()


@dataclass(frozen=True)
class Voiceprint:
    id: int
    user_row: int
    vector: bytes        # float32 little-endian
    speech_ms: int
    model: str
    extractor_version: str
    plda_version: str
    created_ms: int


@dataclass(frozen=True)
class AudioHookOrg:
    """A Genesys organisation allowed to stream over AudioHook. The API key is stored only as
    its SHA-256; the client secret (needed as the HMAC key) only encrypted (see
    gateway/services/audiohook_orgs.py)."""
    org_id: str                   # Genesys organisation UUID, lower-case
    tenant_id: str
    profile_id: str | None        # default VB profile for its calls (customConfig may override)
    api_key_hash: str
    secret_enc: str | None        # None: unsigned requests are accepted for this org
    created_ms: int


@dataclass(frozen=True)
class NiceBusinessUnit:
    """A NICE CXone business unit allowed to stream over the CAAE audio relay. Its API key is
    stored only as its SHA-256 (gateway/services/nice_units.py)."""
    bu_id: str                    # the CXone business unit number, as given to `vbgw nice add-bu`
    tenant_id: str
    profile_id: str | None        # default VB profile of its contacts (scriptParams may override)
    api_key_hash: str
    created_ms: int


RiskLevel = Literal["LOW_RISK", "MEDIUM_RISK", "HIGH_RISK"]     # a blocklist's, on its matches
RISK_LEVELS: tuple[RiskLevel, ...] = get_args(RiskLevel)
FINGERPRINT_KINDS = ("ENROL", "VERIFY")


@dataclass(frozen=True)
class Blocklist:
    """A group's list of fraudster voices (docs/fraud-signals.md)."""
    id: str
    tenant_id: str
    group_id: str
    name: str
    description: str
    risk_level: RiskLevel
    custom_ui_message: str
    custom_agent_message: str
    active: bool
    created_ms: int
    updated_ms: int
    entries: int = 0


@dataclass(frozen=True)
class BlocklistEntry:
    """One fraudster voiceprint of a blocklist (from a WAV file or a past dialog)."""
    id: int
    blocklist_id: str
    label: str
    source: str                   # "wav:<file name>" | "dialog:<dialog id>"
    vector: bytes                 # float32 little-endian
    speech_ms: int
    model: str
    created_ms: int


@dataclass(frozen=True)
class StoredFingerprint:
    """Landmark hashes of one enrolment or verification audio of a user (never audio)."""
    id: int
    kind: str                     # ENROL | VERIFY
    dialog_id: str
    hashes: bytes                 # engine.fraud.fingerprint.pack() form
    created_ms: int


@dataclass(frozen=True)
class FingerprintRef:
    """A stored fingerprint's row, without its hashes."""
    id: int
    kind: str                     # ENROL | VERIFY
    dialog_id: str


# Bounds of the per-key speech minimums (ms of net speech): the shortest lengths
# `vbgw bench duration` measured (1 s tests, 4 s enrolments; docs/benchmarks.md "Speech length")
# up to the seed's 60 s of audio. Below them nothing says the score means anything.
MIN_VERIFY_SPEECH_MS = 1000
MIN_REGISTER_SPEECH_MS = 4000
MAX_SPEECH_MS = 60000


class UserGroupKeySettings(BaseModel):
    """A user group key's own settings for the Aculab Users API (`vbgw admin user-group-key`
    options); None: the gateway's `[aculab]` default (docs/aculab-users-api.md "Speech minimums")."""
    model_config = ConfigDict(extra="forbid")
    register_min_speech_ms: int | None = Field(default=None, ge=MIN_REGISTER_SPEECH_MS, le=MAX_SPEECH_MS)
    update_min_speech_ms: int | None = Field(default=None, ge=MIN_VERIFY_SPEECH_MS, le=MAX_SPEECH_MS)
    verify_min_speech_ms: int | None = Field(default=None, ge=MIN_VERIFY_SPEECH_MS, le=MAX_SPEECH_MS)


def key_settings_json(settings: UserGroupKeySettings) -> str | None:
    """A key's settings as stored (NULL when it has none of its own)."""
    own = settings.model_dump(exclude_none=True)
    return settings.model_dump_json(exclude_none=True) if own else None


def key_settings(stored: str | None) -> UserGroupKeySettings:
    return UserGroupKeySettings.model_validate_json(stored) if stored else UserGroupKeySettings()


@dataclass(frozen=True)
class UserGroupKey:
    """An Aculab-style User Group Key (HTTP Basic password of the Aculab Users API): reaches
    the users of one VB profile only. Stored only as its SHA-256, like PATs."""
    id: str
    tenant_id: str
    group_id: str
    profile_id: str
    name: str
    settings: UserGroupKeySettings = field(default_factory=UserGroupKeySettings)


@dataclass(frozen=True)
class Credential:
    """What an admin may see of a stored credential (a PAT or a user group key): never the
    secret, which exists only as a hash."""
    id: str
    tenant_id: str
    group_id: str
    profile_id: str | None       # user group keys only
    name: str
    created_ms: int
    revoked: bool


@dataclass(frozen=True)
class VerificationStats:
    """Counts of a user's verifications through the Aculab Users API (its `stats`)."""
    attempts: int
    passed: int
    last_ms: int


@dataclass(frozen=True)
class AculabCall:
    """One call of the Aculab Users API that returned an application_instance_id, for its
    `application_status` (issue #16 item 6): ISSUED (a GET's WebSocket URL, not used yet),
    STARTED (its socket is open), DONE (cost_micros final, in millionths of a US dollar)."""
    instance_id: str
    profile_id: str
    action: str
    status: str
    cost_micros: int
    created_ms: int


ACULAB_CALL_STATUSES = ("ISSUED", "STARTED", "DONE")


JOB_STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED")
JOB_STAGES = ("", "FETCHING", "COMMITTING")


@dataclass
class RecordingJob:
    """An enrolment from a CCaaS recording fetched by ccaas_session_id (gateway/services/recordings/
    jobs.py). `biokeys` are in their stored form (sensitive ones as their keyed hash) and are
    emptied when the job finishes; `stage` COMMITTING marks the attempt that may have
    enrolled (analysis and the atomic enrolment commit), so a restart can tell."""
    id: str
    tenant_id: str
    group_id: str
    profile_id: str
    provider: str
    ccaas_session_id: str
    user_id: str
    biokeys: list[StoredBiokey]
    status: str = "QUEUED"               # QUEUED | RUNNING | SUCCEEDED | FAILED
    stage: str = ""                      # "" | FETCHING | COMMITTING (while RUNNING)
    attempts: int = 0                    # provider/download attempts made (polls of a recording
    next_attempt_ms: int = 0             #   still being processed are not counted)
    error_code: str | None = None        # FAILED: why; QUEUED after a failure: the last attempt's
    error_message: str | None = None
    speech_ms: int | None = None         # SUCCEEDED: clean customer speech enrolled
    created_ms: int = 0
    updated_ms: int = 0
    finished_ms: int | None = None


@dataclass
class EnrolmentWrite:
    """Everything one enrolment commits atomically."""
    profile_id: str
    user_id: str
    biokeys: list[StoredBiokey]
    vector: bytes
    speech_ms: int
    model: str
    extractor_version: str
    plda_version: str
    dialog_id: str
    opt_in: bool = False
    audio_paths: list[str] = field(default_factory=list)
    fingerprint: bytes | None = None     # landmark hashes of the enrolment audio (ENROL)
    require_new: bool = False            # Conflict if the user is already enrolled (Aculab register)
    # The user's passphrase templates after this enrolment (engine.passphrase blob; Aculab
    # register/update), stored sealed with the voiceprint; None leaves the stored ones as they are.
    passphrase: bytes | None = None


class StoreError(Exception):
    code = "STORE_ERROR"


class OptedOutError(StoreError):
    code = "USER_OPTED_OUT"


class Conflict(StoreError):
    code = "CONFLICT"


class StoreUnavailable(StoreError):
    """The database cannot be reached (or was lost mid-write and the write was not done)."""
    code = "STORE_UNAVAILABLE"


@dataclass(frozen=True)
class HashKeyUsage:
    """Sensitive biokeys hashed under one hash secret (`key_id`; None: before key ids were kept)."""
    key_id: str | None
    rows: int
    rekeyable: int        # rows with an encrypted copy of the value (re-keyable without the user)


class SealingKeys(Protocol):
    """What the gateway reads of a store's data keys (gateway.store.keys.DataKeys)."""
    active_id: str


class Repository(abc.ABC):
    """What the gateway needs from storage. Every method is a coroutine."""

    keys: SealingKeys | None = None   # the data keys records are sealed under (None: in the clear)
    retry_open = False              # open() may fail for a while (a database server): the gateway retries

    @abc.abstractmethod
    async def open(self) -> None: ...
    @abc.abstractmethod
    async def close(self) -> None: ...
    @abc.abstractmethod
    async def ping(self) -> bool: ...

    # tenancy
    @abc.abstractmethod
    async def ensure_tenant(self, name: str) -> Tenant: ...
    @abc.abstractmethod
    async def get_tenant(self, id_or_name: str) -> Tenant | None: ...
    @abc.abstractmethod
    async def ensure_group(self, tenant_id: str, name: str) -> Group: ...
    @abc.abstractmethod
    async def get_group(self, group_id: str) -> Group | None: ...
    @abc.abstractmethod
    async def create_profile(self, tenant_id: str, group_id: str, name: str,
                             settings: ProfileSettings) -> Profile: ...
    @abc.abstractmethod
    async def get_profile(self, tenant_id: str, id_or_name: str) -> Profile | None: ...
    @abc.abstractmethod
    async def list_profiles(self, tenant_id: str | None = None) -> list[Profile]: ...
    @abc.abstractmethod
    async def create_pat(self, tenant_id: str, group_id: str, name: str, token_hash: str) -> Pat: ...
    @abc.abstractmethod
    async def find_pat(self, token_hash: str) -> Pat | None: ...
    @abc.abstractmethod
    async def list_pats(self, tenant_id: str | None = None) -> list[Credential]: ...
    @abc.abstractmethod
    async def revoke_pat(self, pat_id: str) -> bool:
        """Revoke (keep the row, refuse the token from now on); False if there is no such PAT."""

    # session tokens
    @abc.abstractmethod
    async def create_session(self, rec: SessionRecord) -> None: ...
    @abc.abstractmethod
    async def get_session(self, token_hash: str) -> SessionRecord | None: ...
    @abc.abstractmethod
    async def touch_session(self, token_hash: str, now_ms: int) -> None: ...
    @abc.abstractmethod
    async def purge_sessions(self, older_than_ms: int) -> int: ...

    # users
    @abc.abstractmethod
    async def get_user(self, profile_id: str, user_id: str) -> User | None: ...
    @abc.abstractmethod
    async def search_users(self, profile_id: str, biokeys: list[tuple[str, str]]) -> list[User]: ...
    @abc.abstractmethod
    async def enrol(self, write: EnrolmentWrite) -> tuple[User, Voiceprint]: ...
    @abc.abstractmethod
    async def opt_out(self, profile_id: str, user_id: str) -> tuple[User | None, list[str]]:
        """Delete the user's biometric data and biokeys (also from sessions' customProperties)
        and leave an OPTED_OUT tombstone, with no copy left in a journal; (None, []) for a user
        with no row, and no row is made. Returns the audio file paths the caller unlinks."""
    @abc.abstractmethod
    async def opt_in(self, profile_id: str, user_id: str) -> User | None:
        """OPTED_OUT -> NOT_ENROLLED; None (and no row made) for a user with no row."""
    @abc.abstractmethod
    async def audio_paths(self) -> list[str]:
        """Every kept audio file path the database refers to (start-up reconciliation)."""
    @abc.abstractmethod
    async def voiceprints(self, profile_id: str, user_ids: list[str]) -> dict[str, Voiceprint]: ...
    @abc.abstractmethod
    async def mark_re_enroll(self, profile_id: str, keep_model: str, keep_extractor: str) -> int: ...
    @abc.abstractmethod
    async def next_verification_id(self) -> int: ...

    # Genesys AudioHook organisations
    @abc.abstractmethod
    async def save_audiohook_org(self, org: AudioHookOrg, replace: bool = False) -> None:
        """Insert (Conflict if the org exists and not replace) or replace an organisation."""
    @abc.abstractmethod
    async def audiohook_org_by_key(self, api_key_hash: str) -> AudioHookOrg | None: ...
    @abc.abstractmethod
    async def get_audiohook_org(self, org_id: str) -> AudioHookOrg | None: ...
    @abc.abstractmethod
    async def list_audiohook_orgs(self) -> list[AudioHookOrg]: ...
    @abc.abstractmethod
    async def delete_audiohook_org(self, org_id: str) -> bool:
        """Remove an organisation and its credentials; False if there is none."""

    # NICE CXone business units (CAAE audio relay credentials)
    @abc.abstractmethod
    async def save_nice_bu(self, bu: NiceBusinessUnit, replace: bool = False) -> None:
        """Insert (Conflict if the unit exists and not replace) or replace a business unit."""
    @abc.abstractmethod
    async def nice_bu_by_key(self, api_key_hash: str) -> NiceBusinessUnit | None: ...
    @abc.abstractmethod
    async def get_nice_bu(self, bu_id: str) -> NiceBusinessUnit | None: ...
    @abc.abstractmethod
    async def list_nice_bus(self) -> list[NiceBusinessUnit]: ...
    @abc.abstractmethod
    async def delete_nice_bu(self, bu_id: str) -> bool:
        """Remove a business unit and its credential; False if there is none."""

    # fraud signals: blocklists (per group) and audio fingerprints (per user)
    @abc.abstractmethod
    async def create_blocklist(self, bl: Blocklist) -> Blocklist:
        """Conflict if the group already has a list of that name."""
    @abc.abstractmethod
    async def list_blocklists(self, group_id: str, active_only: bool = False) -> list[Blocklist]: ...
    @abc.abstractmethod
    async def get_blocklist(self, group_id: str, blocklist_id: str) -> Blocklist | None:
        """The list only if it belongs to `group_id` (another group's looks absent)."""
    @abc.abstractmethod
    async def update_blocklist(self, group_id: str, blocklist_id: str, changes: dict) -> Blocklist | None: ...
    @abc.abstractmethod
    async def delete_blocklist(self, group_id: str, blocklist_id: str) -> bool: ...
    @abc.abstractmethod
    async def add_blocklist_entry(self, group_id: str, blocklist_id: str, label: str, source: str,
                                  vector: bytes, speech_ms: int, model: str) -> BlocklistEntry | None: ...
    @abc.abstractmethod
    async def blocklist_entries(self, group_id: str, blocklist_id: str) -> list[BlocklistEntry]: ...
    @abc.abstractmethod
    async def delete_blocklist_entry(self, group_id: str, blocklist_id: str, entry_id: int) -> bool: ...
    @abc.abstractmethod
    async def active_blocklist_entries(self, group_id: str) -> list[tuple[Blocklist, list[BlocklistEntry]]]:
        """Every active list of the group with its entries (the live check's input)."""
    @abc.abstractmethod
    async def add_fingerprint(self, profile_id: str, user_id: str, kind: str, dialog_id: str, hashes: bytes,
                              keep_verify: int = 20, max_age_ms: int | None = None) -> bool:
        """Store a fingerprint for an enrolled user (False if the user is not enrolled); keeps
        the user's VERIFY fingerprints of the last `max_age_ms` (None: any age), at most the
        `keep_verify` most recent of them (replay detection over a retention period, bounded)."""
    @abc.abstractmethod
    async def fingerprints(self, profile_id: str, user_id: str,
                           ids: Collection[int] | None = None) -> list[StoredFingerprint]:
        """The enrolled user's stored fingerprints, oldest first; with `ids`, only those rows."""
    @abc.abstractmethod
    async def fingerprint_refs(self, profile_id: str, user_id: str) -> list[FingerprintRef]:
        """The same rows without their hashes (what a cache of them is checked against: a
        row's hashes never change, a new fingerprint is a new row id)."""

    # Aculab Users API: user group keys and per-user verification counts
    @abc.abstractmethod
    async def create_user_group_key(self, tenant_id: str, group_id: str, profile_id: str, name: str,
                                    key_hash: str, settings: UserGroupKeySettings | None = None) -> UserGroupKey: ...
    @abc.abstractmethod
    async def find_user_group_key(self, key_hash: str) -> UserGroupKey | None: ...
    @abc.abstractmethod
    async def set_user_group_key_settings(self, key_id: str, settings: UserGroupKeySettings) -> bool:
        """Replace a key's settings; False if there is no such key."""
    @abc.abstractmethod
    async def passphrase(self, profile_id: str, user_id: str) -> bytes | None:
        """The registered passphrase templates of an ENROLLED or RE_ENROLL user (None: none)."""
    @abc.abstractmethod
    async def list_user_group_keys(self, tenant_id: str | None = None) -> list[Credential]: ...
    @abc.abstractmethod
    async def revoke_user_group_key(self, key_id: str) -> bool:
        """Revoke (keep the row, refuse the key from now on); False if there is no such key."""
    @abc.abstractmethod
    async def record_verification(self, profile_id: str, user_id: str, passed: bool) -> None:
        """Count one verification of an enrolled user (deleted with the user on opt-out)."""
    @abc.abstractmethod
    async def verification_stats(self, profile_id: str, user_id: str) -> VerificationStats | None: ...
    @abc.abstractmethod
    async def add_aculab_call(self, call: AculabCall, keep_ms: int) -> None:
        """Record a call (its application_instance_id); calls created over `keep_ms` ago are
        deleted in the same transaction (the table stays bounded)."""
    @abc.abstractmethod
    async def update_aculab_call(self, instance_id: str, status: str, cost_micros: int) -> bool:
        """Move a call on (ISSUED -> STARTED -> DONE); a DONE call never changes again.
        False if there is no such call still open."""
    @abc.abstractmethod
    async def get_aculab_call(self, profile_id: str, instance_id: str) -> AculabCall | None:
        """The call only if it belongs to `profile_id` (another profile's looks absent)."""

    # encryption at rest (gateway/store/keys.py) and re-keying of hashed biokeys
    @abc.abstractmethod
    async def key_usage(self) -> dict[str, dict[str | None, int]]:
        """Per sealed table, how many rows each data key id sealed (None: plaintext, from
        before encryption at rest)."""
    @abc.abstractmethod
    async def reencrypt(self, batch: int = 200) -> int:
        """Re-seal up to `batch` rows not sealed under the active data key (plaintext rows
        included), in one transaction; returns how many. 0 means none are left."""
    @abc.abstractmethod
    async def hash_key_usage(self) -> list[HashKeyUsage]: ...
    @abc.abstractmethod
    async def stamp_legacy_hashes(self, key_id: str) -> int:
        """Give sensitive biokeys stored before hash key ids were kept the id `key_id`."""
    @abc.abstractmethod
    async def rekey_biokeys(self, key_id: str, hasher, batch: int = 200) -> int:
        """Recompute, from their encrypted copies, the hashes of up to `batch` sensitive
        biokeys not hashed under `key_id` (hasher(profile_id, key, value) -> stored value), in
        one transaction; returns how many. Rows without an encrypted copy are left alone."""

    # enrolment jobs from CCaaS recordings (gateway/services/recordings/jobs.py)
    @abc.abstractmethod
    async def create_recording_job(self, job: RecordingJob) -> None: ...
    @abc.abstractmethod
    async def get_recording_job(self, job_id: str) -> RecordingJob | None: ...
    @abc.abstractmethod
    async def active_recording_job(self, profile_id: str, provider: str, ccaas_session_id: str,
                                   user_id: str) -> RecordingJob | None:
        """A QUEUED or RUNNING job for the same call and user (a resubmission joins it)."""
    @abc.abstractmethod
    async def claim_recording_jobs(self, now_ms: int, limit: int) -> list[RecordingJob]:
        """At most `limit` QUEUED jobs due by now_ms, earliest first, set RUNNING (stage
        FETCHING) in one transaction, so no job is started twice."""
    @abc.abstractmethod
    async def update_recording_job(self, job: RecordingJob) -> None:
        """Write status, stage, attempts, next attempt, error, speech and timestamps (never
        the biokeys); a SUCCEEDED or FAILED job's biokeys are emptied in the same write."""
    @abc.abstractmethod
    async def recording_jobs_with_status(self, status: str) -> list[RecordingJob]: ...
    @abc.abstractmethod
    async def next_recording_job_ms(self) -> int | None:
        """The earliest next_attempt_ms of the QUEUED jobs (None: none queued)."""
    @abc.abstractmethod
    async def purge_recording_jobs(self, finished_before_ms: int) -> int:
        """Delete finished jobs that finished before the time; returns how many."""
    @abc.abstractmethod
    async def enrolled_since(self, profile_id: str, user_id: str, dialog_id: str, since_ms: int) -> bool:
        """Whether the user's current voiceprint was committed from `dialog_id` at or after
        since_ms (a restart's check of a job that died while committing)."""
