"""The `recording_jobs` row of a RecordingJob, shared by both stores (migration 6).

A queued job carries the biokeys the enrolment will write, in their stored form: plain values,
keyed hashes of sensitive ones with the id of the hash secret that made them (`biokeys`, JSON).
The clear values of sensitive biokeys travel too, as the users' `biokeys` table keeps them:
only sealed under the data key (`biokeys_enc`, AES-GCM bound to the job's id; `biokeys_key_id`
names the key), never without one. So a biokey enrolled by a job can be re-hashed by `vbgw
admin rekey-biokeys` like any other, and `rotate-key` re-seals and counts queued jobs too.
Everything is emptied when the job ends or its user opts out."""
from __future__ import annotations

import json
from typing import Any

from gateway.store.base import RecordingJob, StoredBiokey
from gateway.store.keys import DataKeys, aad, open_opt

# RecordingJob's fields in declaration order, then the sealed clear values.
RECORDING_JOB_COLUMNS = ("id", "tenant_id", "group_id", "profile_id", "provider", "ccaas_session_id", "user_id",
                         "biokeys", "status", "stage", "attempts", "next_attempt_ms", "error_code", "error_message",
                         "speech_ms", "created_ms", "updated_ms", "finished_ms")
ROW_COLUMNS = RECORDING_JOB_COLUMNS + ("biokeys_enc", "biokeys_key_id")
# SQL (both dialects) that empties a job's biokeys: when it ends, when its user opts out.
EMPTY_BIOKEYS = "biokeys='[]', biokeys_enc=NULL, biokeys_key_id=NULL"


def job_aad(job_id: str) -> bytes:
    return aad("recording_jobs", job_id, "biokeys")


def recording_job_values(job: RecordingJob, keys: DataKeys | None) -> tuple:
    """The job as a row of ROW_COLUMNS."""
    bks = json.dumps([{"key": b.key, "value": b.value, "sensitive": b.sensitive, "hash_key_id": b.hash_key_id}
                      for b in job.biokeys])
    plain = {b.key: b.plain for b in job.biokeys if b.sensitive and b.plain is not None}
    enc, kid = (keys.seal(json.dumps(plain).encode(), job_aad(job.id)) if plain and keys is not None
                else (None, None))
    return (*(bks if c == "biokeys" else getattr(job, c) for c in RECORDING_JOB_COLUMNS), enc, kid)


def recording_job_from_row(r: Any, keys: DataKeys | None) -> RecordingJob:
    """A recording_jobs row (sqlite3.Row or asyncpg.Record) as a RecordingJob."""
    plain: dict[str, str] = {}
    if r["biokeys_enc"] is not None:
        plain = json.loads(open_opt(keys, r["biokeys_enc"], r["biokeys_key_id"], job_aad(r["id"])))
    bks = [StoredBiokey(b["key"], b["value"], bool(b["sensitive"]), plain=plain.get(b["key"]),
                        hash_key_id=b.get("hash_key_id")) for b in json.loads(r["biokeys"])]
    fields: dict[str, Any] = {c: r[c] for c in RECORDING_JOB_COLUMNS}
    fields["biokeys"] = bks
    return RecordingJob(**fields)
