"""OpenAPI-driven fuzzing (issue #10 §2): schemathesis generates valid and invalid requests for
every operation of the gateway's own /openapi.json and sends them, with real credentials, to a
real `vbgw serve`. The check: no 5xx, and every error is in its API's envelope (OCP
`{"error": {"code", "message"}}`, Aculab's `{"error": {...}, "request": {...}}`). A new
endpoint is in the document, so it is fuzzed too.

Bounded for CI: a fixed number of examples per operation and generation mode, derandomized
(the same requests every run), no deadline (a loaded machine makes it slower, not red)."""
from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_MODE = 5
# Streaming operations (SSE, WebSockets) are fuzzed without credentials: with a valid token a
# well-formed request would stream for the length of a call. Their protocols have fuzzers of
# their own (test_protocol_fuzz.py).
STREAMING = {"text/event-stream", "application/octet-stream"}


def _envelope_problem(case, response: requests.Response) -> str | None:
    if response.status_code >= 500:
        return f"server error {response.status_code}: {response.text[:300]}"
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type") or response.headers.get("Content-Type") or ""
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    if ctype.startswith("text/html") and "text/html" in _media(case.operation):
        return None      # a page for people (the agent widget): its errors are pages too
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} without a JSON body: {response.text[:200]!r}"
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return f"{response.status_code} outside the envelope: {body!r:.300}"
    if case.operation.path.startswith(("/voice_biometrics/", "/application_status")):   # the Aculab API
        ok = set(body) == {"error", "request"} and err.get("code") == f"HTTP {response.status_code}" \
            and isinstance(err.get("vbgw_code"), str) and isinstance(err.get("text"), str)
    else:
        ok = set(body) == {"error"} and set(err) == {"code", "message"} and \
            all(isinstance(v, str) and v for v in err.values())
    return None if ok else f"{response.status_code} not in this API's envelope: {body!r:.300}"


def _media(operation) -> set[str]:
    return {m for r in operation.definition.raw.get("responses", {}).values() for m in r.get("content", {})}


def _auth_for(operation, creds: dict[str, str]) -> str | None:
    raw = operation.definition.raw
    if _media(operation) & STREAMING:
        return None
    for requirement in raw.get("security") or []:
        for name in requirement:
            return creds[name]
    return None


def test_every_operation_answers_bad_and_good_input_without_a_server_error(gateway_process):
    base, creds = gateway_process.base, gateway_process.creds
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    http = requests.Session()
    for operation in operations:
        auth = _auth_for(operation, creds)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def run(case):
                headers = {"Authorization": auth} if auth else {}
                try:
                    response = case.call(base_url=base, session=http, headers=headers, timeout=60)
                except requests.RequestException as exc:
                    problems.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}")
                    return
                problem = _envelope_problem(case, response)
                if problem:
                    problems.append(f"{operation.label} [{mode.value}]: {problem}")
            try:
                run()
            except Unsatisfiable:
                # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not problems, "\n".join(sorted(set(problems))[:40])
