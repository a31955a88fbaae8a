"""Enrolment jobs: POST /api/enroll with `ccaas_session_id` (and no file) fetches the call's
recording from its provider, which takes from seconds to many minutes (a recording is
processed after the call; providers rate-limit), so it runs as a job (docs/recordings.md).

Life of a job, every step persisted in the store (table recording_jobs) before it counts:

    QUEUED --claim--> RUNNING/FETCHING --recording--> RUNNING/COMMITTING --> SUCCEEDED
       ^                  |                                  |
       +--- retry --------+ (429, 5xx, timeouts,             +--> FAILED (LOW_DATA, bad media,
            at next_attempt_ms   still processing)                opted out...)
                          +--> FAILED (401, 404, attempts or deadline used up)

* Attempts are spaced by exponential backoff with jitter (recordings.retry_base_s doubling
  up to retry_max_s); a Retry-After is honoured (up to max_retry_after_s). A recording that
  is still being processed (202) is polled every processing_poll_s (or its Retry-After)
  without using up attempts, until job_deadline_s.
* Nothing is half-enrolled: the analysis and the enrolment commit are Users.enrol_from_upload,
  whose commit is one transaction (voiceprint, biokeys, kept audio) or nothing.
* A restart forgets nothing: jobs QUEUED wait for their time; a job found RUNNING was
  interrupted. One that was FETCHING is queued again (nothing was enrolled); one that was
  COMMITTING is SUCCEEDED if its voiceprint committed (the user's voiceprint comes from this
  call, committed after the stage began) and queued again otherwise.
* At most recordings.max_concurrent_jobs jobs run at once; their audio analysis also waits
  for uploads.max_concurrent like every upload, after live calls' work.
* Finished jobs keep no biokeys and are deleted after job_retention_s."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import secrets
import time

import structlog

import re
from typing import TYPE_CHECKING

from gateway.errors import ApiError, bad_request, not_found, scrub
from gateway.infra.fetch import FetchConfig
from gateway.infra.metrics import Metrics
from gateway.services.recordings.config import GENESYS, NICE, RecordingsConfig, provider_of
from gateway.services.recordings.media import RecordingSource
from gateway.services.recordings.providers import ProviderError, RecordingClient, make_client
from gateway.store.base import Profile, RecordingJob, Repository, StoreUnavailable

if TYPE_CHECKING:
    from gateway.services.users import Users

log = structlog.get_logger(__name__)

SESSION_ID_RE = re.compile(r"^[0-9A-Za-z_\-]{1,128}$")
JOB_ID_RE = re.compile(r"^job_[0-9a-f]{32}$")

PURGE_EVERY_S = 3600.0
IDLE_WAKE_S = 30.0        # the dispatcher looks at the store at least this often


def now_ms() -> int:
    return int(time.time() * 1000)


class RecordingJobs:
    """Owner of the job dispatcher and its running jobs (started and stopped with the app)."""

    def __init__(self, store: Repository, users: "Users", metrics: Metrics, rc: RecordingsConfig,
                 fetch_cfg: FetchConfig, resolver=None):
        self.store = store
        self.users = users                # the one enrolment path (an upload's, with its source)
        self.metrics = metrics
        self.rc = rc
        self.fetch_cfg = fetch_cfg
        self.resolver = resolver          # tests map provider host names to their servers
        self._clients: dict[tuple[str, str], RecordingClient] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task | None = None
        self._last_purge = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the dispatcher; it first recovers the jobs a stopped gateway left RUNNING. The
        store may not be open yet (a PostgreSQL store opens in the background while the
        database is unreachable, app.py): recovery waits for it, and nothing is claimed before
        recovery is done."""
        self._dispatcher = asyncio.create_task(self._dispatch(), name="recording-jobs")

    async def stop(self) -> None:
        """Stop dispatching and cancel running jobs: they stay RUNNING in the store and are
        recovered at the next start (a cancelled analysis removes its partial audio file)."""
        tasks = [t for t in (self._dispatcher, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for c in self._clients.values():
            await c.close()
        self._clients.clear()

    async def _recover(self) -> None:
        for job in await self.store.recording_jobs_with_status("RUNNING"):
            t = now_ms()
            if job.stage == "COMMITTING" and await self.store.enrolled_since(
                    job.profile_id, job.user_id, job.ccaas_session_id, job.updated_ms):
                job.status, job.stage, job.finished_ms = "SUCCEEDED", "", t
                job.error_code = job.error_message = None
                log.info("recording_job_recovered", job_id=job.id, outcome="committed_before_restart")
            else:
                job.status, job.stage, job.next_attempt_ms = "QUEUED", "", t
                job.error_code, job.error_message = "INTERRUPTED", "the gateway restarted during this attempt"
                log.info("recording_job_recovered", job_id=job.id, outcome="queued_again")
            job.updated_ms = t
            await self.store.update_recording_job(job)

    # -- submission --------------------------------------------------------------------------
    async def submit(self, profile: Profile, provider_field: str, session_id: str, user_id: str,
                     biokeys: dict[str, str]) -> RecordingJob:
        """Queue the enrolment of `user_id` from call `session_id`'s recording, after checking
        everything that can be checked without the provider (ApiError 400 BAD_CCAAS_SESSION_ID,
        UNSUPPORTED_CCAAS_PROVIDER, UNKNOWN_BIOKEY; 409 USER_OPTED_OUT; 501
        CCAAS_NOT_CONFIGURED). A resubmission while a job for the same call and user is
        unfinished returns that job."""
        if not SESSION_ID_RE.match(session_id):
            raise bad_request("BAD_CCAAS_SESSION_ID", "ccaas_session_id: the provider's call id "
                                                      "(0-9 a-z A-Z _ -, 1 to 128 characters)")
        provider = provider_of(provider_field)
        if provider not in (GENESYS, NICE):
            raise bad_request("UNSUPPORTED_CCAAS_PROVIDER", f"recordings are fetched from {GENESYS} or {NICE}; "
                                                            f"ccaas_provider is {provider_field[:40]!r}")
        if self.rc.credentials(profile.tenant_id, await self._tenant_name(profile.tenant_id), provider) is None:
            raise ApiError(501, "CCAAS_NOT_CONFIGURED", f"no {provider} recording credentials are configured for "
                                                       "this tenant (recordings.tenants); upload the file instead")
        stored = self.users.stored_biokeys(profile, biokeys)      # 400 UNKNOWN_BIOKEY now, not in the job
        existing_user = await self.store.get_user(profile.id, user_id)
        if existing_user is not None and existing_user.status == "OPTED_OUT":
            raise ApiError(409, "USER_OPTED_OUT", f"user {user_id!r} opted out; opt in first (POST /users/optin)")
        existing = await self.store.active_recording_job(profile.id, provider, session_id, user_id)
        if existing is not None:
            return existing
        t = now_ms()
        job = RecordingJob("job_" + secrets.token_hex(16), profile.tenant_id, profile.group_id, profile.id, provider,
                           session_id, user_id, stored, created_ms=t, updated_ms=t, next_attempt_ms=t)
        await self.store.create_recording_job(job)
        self.metrics.inc("vbgw_recording_jobs_total", provider=provider)
        log.info("recording_job_queued", job_id=job.id, provider=provider, dialog_id=session_id)
        self._wake.set()
        return job

    async def visible(self, job_id: str, tenant_id: str, group_id: str, profile_id: str | None) -> RecordingJob:
        """The job, if the credential may see it: a PAT (profile_id None) its tenant and group's
        jobs, a session its own profile's. Any other job, and one that does not exist, is the
        same 404 JOB_NOT_FOUND."""
        job = await self.store.get_recording_job(job_id) if JOB_ID_RE.match(job_id) else None
        if (job is None or (job.tenant_id, job.group_id) != (tenant_id, group_id)
                or (profile_id is not None and job.profile_id != profile_id)):
            raise not_found("JOB_NOT_FOUND", "no such enrolment job for this token")
        return job

    async def _tenant_name(self, tenant_id: str) -> str:
        tenant = await self.store.get_tenant(tenant_id)
        return tenant.name if tenant else ""

    # -- dispatching -------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            try:
                await self._recover()
                break
            except StoreUnavailable:         # not open yet, or unreachable: try again shortly
                await asyncio.sleep(1.0)
            except Exception:  # noqa: BLE001 - logged; dispatching waits until recovery is done
                log.exception("recording_recovery_failed")
                await asyncio.sleep(5.0)
        while True:
            try:
                await self._dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a store hiccup must not end dispatching
                log.exception("recording_dispatch_failed")
                await asyncio.sleep(1.0)

    def _job_done(self, job_id: str, _task: asyncio.Task) -> None:
        self._running.pop(job_id, None)
        self._wake.set()              # a slot is free: look for due jobs at once

    async def _dispatch_once(self) -> None:
        free = self.rc.max_concurrent_jobs - len(self._running)
        if free > 0:
            for job in await self.store.claim_recording_jobs(now_ms(), free):
                task = asyncio.create_task(self._run(job), name=f"recording-job-{job.id}")
                self._running[job.id] = task
                task.add_done_callback(functools.partial(self._job_done, job.id))
        if time.monotonic() - self._last_purge > PURGE_EVERY_S:
            self._last_purge = time.monotonic()
            n = await self.store.purge_recording_jobs(now_ms() - int(self.rc.job_retention_s * 1000))
            if n:
                log.info("recording_jobs_purged", jobs=n)
        wait = IDLE_WAKE_S
        if len(self._running) < self.rc.max_concurrent_jobs:
            due = await self.store.next_recording_job_ms()
            if due is not None:
                wait = min(wait, max(0.0, (due - now_ms()) / 1000))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=wait)

    # -- one attempt -------------------------------------------------------------------------
    def client(self, job: RecordingJob, tenant_name: str) -> RecordingClient:
        key = (job.tenant_id, job.provider)
        if key not in self._clients:
            creds = self.rc.credentials(job.tenant_id, tenant_name, job.provider)
            if creds is None:
                raise ProviderError("PROVIDER_REJECTED", f"no {job.provider} credentials are configured for "
                                                         "this tenant (recordings.tenants)")
            self._clients[key] = make_client(job.provider, creds, self.rc, self.fetch_cfg, self.resolver)
        return self._clients[key]

    async def _run(self, job: RecordingJob) -> None:
        try:
            await self._attempt(job)
        except asyncio.CancelledError:
            raise                                   # shutdown: recovered at the next start
        except ProviderError as exc:
            await self._provider_failed(job, exc)
        except ApiError as exc:                     # the audio or the enrolment refused it
            await self._finish(job, "FAILED", exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - the job fails, the gateway goes on
            ref = secrets.token_hex(6)
            log.error("recording_job_error", job_id=job.id, ref=ref, exc_info=exc)
            await self._finish(job, "FAILED", "INTERNAL", f"internal error (reference {ref})")

    async def _attempt(self, job: RecordingJob) -> None:
        profile = await self.store.get_profile(job.tenant_id, job.profile_id)
        if profile is None:
            raise ApiError(404, "PROFILE_NOT_FOUND", "the job's VB profile no longer exists")
        deadline = job.created_ms + self.rc.job_deadline_s * 1000
        if now_ms() > deadline:
            raise ProviderError("PROVIDER_UNAVAILABLE", "the job's time (recordings.job_deadline_s) ran out")
        client = self.client(job, await self._tenant_name(job.tenant_id))
        data = await client.fetch_recording(job.ccaas_session_id)
        job.stage, job.updated_ms = "COMMITTING", now_ms()
        await self.store.update_recording_job(job)
        source = RecordingSource(self.rc.channel_map(job.provider))
        _, speech = await self.users.enrol_from_upload(profile, job.user_id, job.biokeys, data,
                                                       job.ccaas_session_id, keep_audio=True, source=source)
        job.speech_ms = speech
        await self._finish(job, "SUCCEEDED", None, None)
        log.info("recording_job_enrolled", job_id=job.id, dialog_id=job.ccaas_session_id, speech_ms=speech,
                 container=source.info.container if source.info else None)

    async def _provider_failed(self, job: RecordingJob, exc: ProviderError) -> None:
        t = now_ms()
        if not exc.not_ready:
            job.attempts += 1
        deadline = job.created_ms + self.rc.job_deadline_s * 1000
        delay = self._delay(job, exc)
        if not exc.retryable or job.attempts >= self.rc.max_attempts or t + delay * 1000 > deadline:
            code = exc.code
            if exc.not_ready:
                code = "RECORDING_NOT_READY"
            await self._finish(job, "FAILED", code, exc.message)
            return
        job.status, job.stage = "QUEUED", ""
        job.next_attempt_ms = t + int(delay * 1000)
        job.error_code, job.error_message, job.updated_ms = exc.code, scrub(exc.message), t
        await self.store.update_recording_job(job)
        log.info("recording_job_retry", job_id=job.id, code=exc.code, attempts=job.attempts, delay_s=round(delay, 2))

    def _delay(self, job: RecordingJob, exc: ProviderError) -> float:
        if exc.retry_after is not None:
            return min(exc.retry_after, self.rc.max_retry_after_s)
        if exc.not_ready:
            return self.rc.processing_poll_s
        backoff = min(self.rc.retry_max_s, self.rc.retry_base_s * 2 ** max(0, job.attempts - 1))
        return backoff * random.uniform(0.5, 1.0)

    async def _finish(self, job: RecordingJob, status: str, code: str | None, message: str | None) -> None:
        t = now_ms()
        job.status, job.stage, job.error_code = status, "", code
        job.error_message = scrub(message) if message else None
        job.updated_ms = job.finished_ms = t
        job.biokeys = []
        await self.store.update_recording_job(job)
        self.metrics.inc("vbgw_recording_jobs_finished_total", status=status, code=code or "OK")
        if status == "FAILED":
            log.warning("recording_job_failed", job_id=job.id, code=code, attempts=job.attempts)
