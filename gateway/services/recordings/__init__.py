"""Enrolment from CCaaS call recordings (issue #14 section 2; docs/recordings.md).

* `media`: recording files (.wav, .mp4/.m4a) -> the customer's channel as 8 kHz int16 blocks;
* `config`: the `[recordings]` configuration (channel maps, provider credentials per tenant);
* `providers`: Genesys Cloud and NICE CXone recording APIs (through gateway.infra.fetch);
* `jobs`: `ccaas_session_id` enrolments as persisted jobs with retries.

The HTTP side (POST /api/enroll's 202, the job status endpoint) is gateway/web/recordings.py.
"""
