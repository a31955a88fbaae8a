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
* Nothing is half-enrolled: the analysis and the enrolment commit are core.enrol_from_upload,
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
import random
import secrets
import time

import structlog

from gateway.errors import ApiError, scrub
from gateway.fetch import FetchConfig
from gateway.recordings.config import RecordingsConfig
from gateway.recordings.media import RecordingSource
from gateway.recordings.providers import ProviderError, RecordingClient, make_client
from gateway.store.base import RecordingJob, StoredBiokey

log = structlog.get_logger(__name__)

PURGE_EVERY_S = 3600.0
IDLE_WAKE_S = 30.0        # the dispatcher looks at the store at least this often


def now_ms() -> int:
    return int(time.time() * 1000)


class RecordingJobs:
    """Owner of the job dispatcher and its running jobs (started and stopped with the app)."""

    def __init__(self, core, rc: RecordingsConfig, fetch_cfg: FetchConfig, resolver=None):
        self.core = core
        self.store = core.store
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
        await self._recover()
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
    async def submit(self, *, tenant_id: str, group_id: str, profile_id: str, provider: str,
                     ccaas_session_id: str, user_id: str, biokeys: list[StoredBiokey]) -> tuple[RecordingJob, bool]:
        """A new QUEUED job, or the unfinished one for the same call and user (False)."""
        existing = await self.store.active_recording_job(profile_id, provider, ccaas_session_id, user_id)
        if existing is not None:
            return existing, False
        t = now_ms()
        job = RecordingJob("job_" + secrets.token_hex(16), tenant_id, group_id, profile_id, provider,
                           ccaas_session_id, user_id, biokeys, created_ms=t, updated_ms=t, next_attempt_ms=t)
        await self.store.create_recording_job(job)
        self.core.metrics.inc("vbgw_recording_jobs_total", provider=provider)
        log.info("recording_job_queued", job_id=job.id, provider=provider, dialog_id=ccaas_session_id)
        self._wake.set()
        return job, True

    # -- dispatching -------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            try:
                await self._dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a store hiccup must not end dispatching
                log.exception("recording_dispatch_failed")
                await asyncio.sleep(1.0)

    async def _dispatch_once(self) -> None:
        free = self.rc.max_concurrent_jobs - len(self._running)
        if free > 0:
            for job in await self.store.claim_recording_jobs(now_ms(), free):
                task = asyncio.create_task(self._run(job), name=f"recording-job-{job.id}")
                self._running[job.id] = task
                task.add_done_callback(lambda _t, i=job.id: (self._running.pop(i, None), self._wake.set()))
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
        client = self.client(job, await self.core.tenant_name(job.tenant_id))
        data = await client.fetch_recording(job.ccaas_session_id)
        job.stage, job.updated_ms = "COMMITTING", now_ms()
        await self.store.update_recording_job(job)
        source = RecordingSource(self.rc.channel_map(job.provider))
        _, speech = await self.core.enrol_from_upload(profile, job.user_id, job.biokeys, data,
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
        self.core.metrics.inc("vbgw_recording_jobs_finished_total", status=status, code=code or "OK")
        if status == "FAILED":
            log.warning("recording_job_failed", job_id=job.id, code=code, attempts=job.attempts)
