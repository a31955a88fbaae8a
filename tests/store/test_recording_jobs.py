"""The recording-job part of the Repository contract (enrolment from CCaaS recordings,
gateway/services/recordings/jobs.py), pinned for SQLite and PostgreSQL alike: a job round-trips
with its stored biokeys; a claim takes only due QUEUED jobs, earliest first, and sets them
RUNNING; concurrent claimers (two stores on one database, as two gateway instances) never get the
same job; an update never writes biokeys and empties them when the job ends; opt-out empties the
user's jobs' biokeys in its own transaction; finished jobs are purged by age, unfinished never;
enrolled_since tells a commit that happened from one that did not."""
from __future__ import annotations

import asyncio
import dataclasses
import json

from gateway.store.base import RecordingJob, StoredBiokey
from store_support import make_store, write


def job(profile, job_id: str, *, user_id: str = "u1", session: str = "call-1", due_ms: int = 1000,
        created_ms: int = 1000, provider: str = "NICE_IN_CONTACT", biokeys=None) -> RecordingJob:
    bks = biokeys if biokeys is not None else [StoredBiokey("Ani", "+15550100", False),
                                               StoredBiokey("DoB", "hmac:abc", True)]
    return RecordingJob(f"job_{job_id:0>32}", profile.tenant_id, profile.group_id, profile.id, provider, session,
                        user_id, bks, next_attempt_ms=due_ms, created_ms=created_ms, updated_ms=created_ms)


def name(j: RecordingJob) -> str:
    return j.id[len("job_"):].lstrip("0")


async def stored_biokeys(raw, job_id: str) -> list:
    return json.loads(await raw.one("SELECT biokeys FROM recording_jobs WHERE id=?", job_id))


async def test_a_job_round_trips_and_resubmissions_find_the_unfinished_one(repo, profile):
    j = job(profile, "1")
    await repo.create_recording_job(j)
    got = await repo.get_recording_job(j.id)
    assert got == j
    assert [(b.key, b.value, b.sensitive) for b in got.biokeys] == [("Ani", "+15550100", False),
                                                                     ("DoB", "hmac:abc", True)]
    assert await repo.get_recording_job("job_" + "f" * 32) is None
    assert (await repo.active_recording_job(profile.id, "NICE_IN_CONTACT", "call-1", "u1")).id == j.id
    for other in [(profile.id, "GENESYS", "call-1", "u1"), (profile.id, "NICE_IN_CONTACT", "call-2", "u1"),
                  (profile.id, "NICE_IN_CONTACT", "call-1", "u2"), ("prof_other", "NICE_IN_CONTACT", "call-1", "u1")]:
        assert await repo.active_recording_job(*other) is None, other
    # a finished job is no longer joined: the same call may be submitted again
    j.status, j.finished_ms = "FAILED", 2000
    await repo.update_recording_job(j)
    assert await repo.active_recording_job(profile.id, "NICE_IN_CONTACT", "call-1", "u1") is None


async def test_claims_take_due_queued_jobs_earliest_first(repo, profile):
    await repo.create_recording_job(job(profile, "late", due_ms=5000, created_ms=100))
    await repo.create_recording_job(job(profile, "b", due_ms=2000, created_ms=300))
    await repo.create_recording_job(job(profile, "a", due_ms=2000, created_ms=200))
    await repo.create_recording_job(job(profile, "first", due_ms=1000, created_ms=400))
    assert await repo.next_recording_job_ms() == 1000
    got = await repo.claim_recording_jobs(3000, 2)
    assert [name(j) for j in got] == ["first", "a"]
    assert all((j.status, j.stage, j.updated_ms) == ("RUNNING", "FETCHING", 3000) for j in got)
    assert [name(j) for j in await repo.recording_jobs_with_status("RUNNING")] == ["a", "first"]  # by created_ms
    assert [name(j) for j in await repo.claim_recording_jobs(3000, 5)] == ["b"]      # "late" is not due yet
    assert await repo.claim_recording_jobs(3000, 5) == []
    assert await repo.next_recording_job_ms() == 5000
    assert [name(j) for j in await repo.claim_recording_jobs(5000, 5)] == ["late"]
    assert await repo.next_recording_job_ms() is None


async def test_concurrent_claimers_never_get_the_same_job(backend, data_keys, repo, profile):
    """Two stores on one database (two gateway instances, each with its own connections) and
    several claims in flight on each: every job is claimed exactly once."""
    n = 40
    for i in range(n):
        await repo.create_recording_job(job(profile, f"{i}", due_ms=1000 + i % 5, created_ms=i))
    other = make_store(*backend, data_keys)
    await other.open()
    try:
        async def claimer(store) -> list[str]:
            mine: list[str] = []
            while batch := await store.claim_recording_jobs(10_000, 3):
                mine += [j.id for j in batch]
                await asyncio.sleep(0)
            return mine
        results = await asyncio.gather(*(claimer(s) for s in (repo, other, repo, other, repo, other)))
    finally:
        await other.close()
    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed)) == n
    assert len(await repo.recording_jobs_with_status("RUNNING")) == n


async def test_updates_keep_biokeys_until_the_job_ends(repo, profile, raw):
    j = job(profile, "1")
    await repo.create_recording_job(j)
    [j] = await repo.claim_recording_jobs(2000, 1)
    # a retry: back to QUEUED with the attempt's error; the biokeys stay (and are never rewritten)
    j2 = dataclasses.replace(j, status="QUEUED", stage="", attempts=1, next_attempt_ms=9000,
                             error_code="PROVIDER_RATE_LIMITED", error_message="429", updated_ms=2500, biokeys=[])
    await repo.update_recording_job(j2)
    got = await repo.get_recording_job(j.id)
    assert (got.status, got.attempts, got.next_attempt_ms, got.error_code, got.updated_ms) == (
        "QUEUED", 1, 9000, "PROVIDER_RATE_LIMITED", 2500)
    assert [b.key for b in got.biokeys] == ["Ani", "DoB"]
    # the end: SUCCEEDED with the speech enrolled; the biokeys are gone in the same write
    done = dataclasses.replace(got, status="SUCCEEDED", stage="", error_code=None, error_message=None,
                               speech_ms=11940, updated_ms=3000, finished_ms=3000)
    await repo.update_recording_job(done)
    got = await repo.get_recording_job(j.id)
    assert (got.status, got.speech_ms, got.finished_ms, got.biokeys) == ("SUCCEEDED", 11940, 3000, [])
    assert await stored_biokeys(raw, j.id) == []


async def test_opt_out_empties_the_users_jobs_biokeys(repo, profile, raw):
    await repo.enrol(write(profile.id, "leaving"))
    await repo.enrol(write(profile.id, "staying"))
    sealed = [StoredBiokey("DoB", "hmac:abc", True, plain="19700101", hash_key_id="hk1")]
    mine, theirs = job(profile, "1", user_id="leaving", biokeys=sealed), job(profile, "2", user_id="staying")
    running = job(profile, "3", user_id="leaving", session="call-2")
    for j in (mine, theirs, running):
        await repo.create_recording_job(j)
    await repo.claim_recording_jobs(1000, 1)              # one of them is RUNNING: emptied too
    user, _ = await repo.opt_out(profile.id, "leaving")
    assert user.status == "OPTED_OUT"
    assert await stored_biokeys(raw, mine.id) == [] and await stored_biokeys(raw, running.id) == []
    assert (await repo.get_recording_job(mine.id)).biokeys == []
    assert await raw.rows("SELECT biokeys_enc, biokeys_key_id FROM recording_jobs WHERE id=?", mine.id) == [(None, None)]
    assert [b["key"] for b in await stored_biokeys(raw, theirs.id)] == ["Ani", "DoB"]
    assert "+15550100" not in str(await raw.rows("SELECT * FROM recording_jobs WHERE user_id='leaving'"))


async def test_finished_jobs_are_purged_by_age_and_unfinished_never(repo, profile):
    for label, status, finished in [("old-ok", "SUCCEEDED", 1000), ("old-fail", "FAILED", 1500),
                                    ("new", "SUCCEEDED", 5000), ("queued", "QUEUED", None),
                                    ("running", "RUNNING", None)]:
        j = job(profile, label, session=label)
        await repo.create_recording_job(j)
        if status != "QUEUED":
            await repo.update_recording_job(dataclasses.replace(j, status=status, finished_ms=finished))
    assert await repo.purge_recording_jobs(2000) == 2
    assert await repo.purge_recording_jobs(2000) == 0
    left = {name(j) for s in ("QUEUED", "RUNNING", "SUCCEEDED") for j in await repo.recording_jobs_with_status(s)}
    assert left == {"new", "queued", "running"}


async def test_enrolled_since_tells_a_committed_enrolment(repo, profile):
    await repo.enrol(write(profile.id, "u1", dialog_id="call-9"))
    [vp] = (await repo.voiceprints(profile.id, ["u1"])).values()
    assert await repo.enrolled_since(profile.id, "u1", "call-9", vp.created_ms)
    assert not await repo.enrolled_since(profile.id, "u1", "call-9", vp.created_ms + 1)    # before the attempt
    assert not await repo.enrolled_since(profile.id, "u1", "call-8", 0)                    # another call
    assert not await repo.enrolled_since(profile.id, "u2", "call-9", 0)
    await repo.opt_out(profile.id, "u1")
    assert not await repo.enrolled_since(profile.id, "u1", "call-9", 0)                    # nothing left


async def test_a_jobs_sensitive_biokeys_keep_their_hash_key_and_a_sealed_clear_value(backend, repo, profile, raw,
                                                                                      data_keys):
    """What the enrolment writes into `biokeys` (the hash, the id of the hash secret, the clear
    value sealed under the data key, so `rekey-biokeys` can redo the hash) survives the queue,
    and the clear value is never at rest unsealed; rotate-key counts and re-seals queued jobs."""
    from gateway.store.keys import DataKeys, new_key
    bks = [StoredBiokey("Ani", "+15550100", False), StoredBiokey("DoB", "hmac:abc", True, plain="19700101",
                                                                 hash_key_id="hk1")]
    j = job(profile, "1", biokeys=bks)
    await repo.create_recording_job(j)
    got = await repo.get_recording_job(j.id)
    assert [(b.key, b.value, b.plain, b.hash_key_id) for b in got.biokeys] == [
        ("Ani", "+15550100", None, None), ("DoB", "hmac:abc", "19700101", "hk1")]
    [row] = await raw.rows("SELECT * FROM recording_jobs")
    assert not any(b"19700101" in (bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode()) for v in row)
    assert (await repo.key_usage())["recording_jobs"] == {data_keys.active_id: 1}
    # rotation: re-sealed under the new key, readable with it alone
    rotated = DataKeys([new_key(), *data_keys.raw_keys()])
    store = make_store(*backend, rotated)
    await store.open()
    try:
        assert await store.reencrypt() == 1
        assert (await store.key_usage())["recording_jobs"] == {rotated.active_id: 1}
    finally:
        await store.close()
    only_new = make_store(*backend, DataKeys(rotated.raw_keys()[:1]))
    await only_new.open()
    try:
        assert [b.plain for b in (await only_new.get_recording_job(j.id)).biokeys] == [None, "19700101"]
        # the job ends: nothing of its biokeys is left, sealed or not
        await only_new.update_recording_job(dataclasses.replace(j, status="FAILED", finished_ms=5000))
        assert (await only_new.key_usage())["recording_jobs"] == {}
        assert await raw.rows("SELECT biokeys, biokeys_enc, biokeys_key_id FROM recording_jobs") == [("[]", None, None)]
    finally:
        await only_new.close()


async def test_without_data_keys_a_job_keeps_no_clear_value(backend, repo, profile, raw):
    plain_store = make_store(*backend, None)
    await plain_store.open()
    try:
        j = job(profile, "1", biokeys=[StoredBiokey("DoB", "hmac:abc", True, plain="19700101", hash_key_id="hk1")])
        await plain_store.create_recording_job(j)
        [b] = (await plain_store.get_recording_job(j.id)).biokeys
        assert (b.value, b.plain, b.hash_key_id) == ("hmac:abc", None, "hk1")
        assert await raw.one("SELECT biokeys_enc FROM recording_jobs") is None
    finally:
        await plain_store.close()
