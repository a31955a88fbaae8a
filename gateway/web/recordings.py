"""HTTP side of enrolment from recordings (docs/recordings.md): the job status endpoint, and
what POST /api/enroll (gateway/web/ocp.py batch_enrol) calls for a recording:

* a file (`.wav` or `.mp4`/`.m4a`): `recording_source` decodes it with the provider's channel
  map; the upload is enrolled in the request and answered 200 as before (the seed's shape);
* `ccaas_session_id` without a file: `submit_fetch` has the job service check everything that
  can be checked now (provider, credentials, biokeys, opt-out) and answers 202 with the job's
  id and status URL; GET that URL for the outcome.

The jobs themselves (gateway/services/recordings/jobs.py) start with the app (`lifecycle`,
after the services are built) and stop before them."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.services.auth import PAT_PREFIX
from gateway.services.recordings.jobs import RecordingJobs
from gateway.services.recordings.media import RecordingSource
from gateway.store.base import Profile, RecordingJob
from gateway.web.appkeys import SERVICES, SETTINGS
from gateway.web.http_auth import bearer, caller, pat
from gateway.web.routing import RouteTable, json_response
from gateway.web.schemas import BatchEnrolResponse

routes = RouteTable()
RECORDING_JOBS: web.AppKey[RecordingJobs] = web.AppKey("recording_jobs", RecordingJobs)
# Tests: an aiohttp resolver for the providers' host names (set before the app starts).
PROVIDER_RESOLVER: web.AppKey[object] = web.AppKey("recordings_provider_resolver", object)

JOBS_PATH = "/api/enroll/jobs/{job_id}"
PREFIX = "/agent-vb-mw"


class JobError(BaseModel):
    code: str
    message: str


class EnrolJobAccepted(BaseModel):
    data: str = "Enroll job accepted"
    job_id: str
    status: str = Field(description="QUEUED or RUNNING (an unfinished job for the same call and user)")
    status_url: str


class EnrolJobStatus(BaseModel):
    job_id: str
    status: str = Field(description="QUEUED, RUNNING, SUCCEEDED or FAILED")
    ccaas_provider: str
    ccaas_session_id: str
    user_id: str
    attempts: int = Field(description="provider attempts made (polls of a recording still processing "
                                      "are not counted)")
    created_ts: int
    updated_ts: int
    next_attempt_ts: int | None = Field(description="QUEUED: when the next attempt starts (unix ms)")
    finished_ts: int | None
    result: BatchEnrolResponse | None = Field(description="SUCCEEDED: what a file upload answers")
    error: JobError | None = Field(description="FAILED: why, with a stable code")
    last_error: JobError | None = Field(description="QUEUED after a failed attempt: that attempt's error")
    status_url: str


async def lifecycle(app: web.Application):
    """Runs after the services are built (cleanup_ctx order) and stops before they are."""
    settings, services = app[SETTINGS], app[SERVICES]
    jobs = RecordingJobs(services.store, services.users, services.metrics, settings.recordings, settings.fetch,
                         app.get(PROVIDER_RESOLVER))
    await jobs.start()
    app[RECORDING_JOBS] = jobs
    yield
    await jobs.stop()


def recording_source(request: web.Request, provider: str | None, filename: str = "") -> RecordingSource:
    """The decoder of an uploaded recording, with its provider's channel map."""
    return RecordingSource(request.app[SETTINGS].recordings.channel_map(provider), filename)


def status_url(request: web.Request, job_id: str) -> str:
    prefix = PREFIX if request.path.startswith(PREFIX + "/") else ""
    return prefix + JOBS_PATH.format(job_id=job_id)


async def submit_fetch(request: web.Request, profile: Profile, provider_field: str, session_id: str,
                       user_id: str, biokeys: dict[str, str]) -> web.Response:
    """Queue the enrolment of `user_id` from call `session_id`'s recording: 202 and where to
    ask for the outcome."""
    job = await request.app[RECORDING_JOBS].submit(profile, provider_field, session_id, user_id, biokeys)
    url = status_url(request, job.id)
    resp = json_response(EnrolJobAccepted(job_id=job.id, status=job.status, status_url=url), status=202)
    resp.headers["Location"] = url
    return resp


def _status(request: web.Request, job: RecordingJob) -> EnrolJobStatus:
    err = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return EnrolJobStatus(
        job_id=job.id, status=job.status, ccaas_provider=job.provider, ccaas_session_id=job.ccaas_session_id,
        user_id=job.user_id, attempts=job.attempts, created_ts=job.created_ms, updated_ts=job.updated_ms,
        next_attempt_ts=job.next_attempt_ms if job.status == "QUEUED" else None, finished_ts=job.finished_ms,
        result=BatchEnrolResponse(data="Enroll user accepted", user_id=job.user_id, speech_millis=job.speech_ms or 0)
        if job.status == "SUCCEEDED" else None,
        error=err if job.status == "FAILED" else None,
        last_error=err if job.status in ("QUEUED", "RUNNING") else None,
        status_url=status_url(request, job.id))


@routes.route("GET", JOBS_PATH, summary="Status of a batch enrolment job (POST /api/enroll with ccaas_session_id)",
              auth="pat_or_session", response=EnrolJobStatus, tags=("enrolment",), aliases=(PREFIX + JOBS_PATH,))
async def job_status(request: web.Request) -> web.Response:
    """A PAT sees its tenant and group's jobs; a session token its own profile's (404 for
    any other job, as for one that does not exist)."""
    jobs, job_id = request.app[RECORDING_JOBS], request.match_info["job_id"]
    if (bearer(request) or "").startswith(PAT_PREFIX):
        p = await pat(request)
        job = await jobs.visible(job_id, p.tenant_id, p.group_id, None)
    else:
        s = (await caller(request)).session
        job = await jobs.visible(job_id, s.tenant_id, s.group_id, s.profile_id)
    return json_response(_status(request, job))
