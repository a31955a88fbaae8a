"""HTTP side of enrolment from recordings (docs/recordings.md): the job status endpoint, and
what POST /api/enroll (gateway/api/ocp.py batch_enrol) calls for a recording:

* a file (`.wav` or `.mp4`/`.m4a`): `recording_source` decodes it with the provider's channel
  map; the upload is enrolled in the request and answered 200 as before (the seed's shape);
* `ccaas_session_id` without a file: `submit_fetch` validates everything that can be checked
  now (provider, credentials, biokeys, opt-out) and answers 202 with the job's id and status
  URL; GET that URL for the outcome."""
from __future__ import annotations

import re

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.routing import RouteTable, json_response
from gateway.api.schemas import BatchEnrolResponse
from gateway.appkeys import CORE, SETTINGS
from gateway.auth import PAT_PREFIX, bearer
from gateway.errors import ApiError, bad_request
from gateway.recordings.config import GENESYS, NICE, provider_of
from gateway.recordings.jobs import RecordingJobs
from gateway.recordings.media import RecordingSource
from gateway.store.base import Profile, RecordingJob

routes = RouteTable()
RECORDING_JOBS = web.AppKey("recording_jobs", RecordingJobs)
# Tests: an aiohttp resolver for the providers' host names (set before the app starts).
PROVIDER_RESOLVER = web.AppKey("recordings_provider_resolver", object)

SESSION_ID_RE = re.compile(r"^[0-9A-Za-z_\-]{1,128}$")
JOB_ID_RE = re.compile(r"^job_[0-9a-f]{32}$")
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
    """Runs after the core's own start-up (cleanup_ctx order) and stops before it."""
    settings = app[SETTINGS]
    jobs = RecordingJobs(app[CORE], settings.recordings, settings.fetch, app.get(PROVIDER_RESOLVER))
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
    """Queue the enrolment of `user_id` from call `session_id`'s recording (202)."""
    core = request.app[CORE]
    rc = request.app[SETTINGS].recordings
    if not SESSION_ID_RE.match(session_id):
        raise bad_request("BAD_CCAAS_SESSION_ID", "ccaas_session_id: the provider's call id "
                                                  "(0-9 a-z A-Z _ -, 1 to 128 characters)")
    provider = provider_of(provider_field)
    if provider not in (GENESYS, NICE):
        raise bad_request("UNSUPPORTED_CCAAS_PROVIDER", f"recordings are fetched from {GENESYS} or {NICE}; "
                                                        f"ccaas_provider is {provider_field[:40]!r}")
    tenant = await core.store.get_tenant(profile.tenant_id)
    if rc.credentials(profile.tenant_id, tenant.name if tenant else "", provider) is None:
        raise ApiError(501, "CCAAS_NOT_CONFIGURED", f"no {provider} recording credentials are configured for "
                                                   "this tenant (recordings.tenants); upload the file instead")
    stored = core.stored_biokeys(profile, biokeys)            # 400 UNKNOWN_BIOKEY now, not in the job
    existing = await core.store.get_user(profile.id, user_id)
    if existing is not None and existing.status == "OPTED_OUT":
        raise ApiError(409, "USER_OPTED_OUT", f"user {user_id!r} opted out; opt in first (POST /users/optin)")
    job, _ = await request.app[RECORDING_JOBS].submit(
        tenant_id=profile.tenant_id, group_id=profile.group_id, profile_id=profile.id, provider=provider,
        ccaas_session_id=session_id, user_id=user_id, biokeys=stored)
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
    """A PAT sees its tenant and group's jobs; a session token its own profile's. Any other
    job, and one that does not exist, is the same 404."""
    core = request.app[CORE]
    if (bearer(request) or "").startswith(PAT_PREFIX):
        pat = await core.auth.pat(request)
        mine = lambda j: j.tenant_id == pat.tenant_id and j.group_id == pat.group_id  # noqa: E731
    else:
        rec, _ = await core.auth.session(request)
        mine = lambda j: (j.tenant_id, j.group_id, j.profile_id) == (rec.tenant_id, rec.group_id,  # noqa: E731
                                                                     rec.profile_id)
    job_id = request.match_info["job_id"]
    job = await core.store.get_recording_job(job_id) if JOB_ID_RE.match(job_id) else None
    if job is None or not mine(job):
        raise ApiError(404, "JOB_NOT_FOUND", "no such enrolment job for this token")
    return json_response(_status(request, job))
