"""The route table declares more than one successful answer: `responses={202: Model}` puts the
answer in /openapi.json beside 200 and the error default (a unit test: no gateway), and POST
/api/enroll declares the 202 it answers for a `ccaas_session_id` job (docs/recordings.md)."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from gateway.web.openapi import build_openapi
from gateway.web.routing import RouteTable


class Done(BaseModel):
    data: str


class Queued(BaseModel):
    job_id: str


def test_extra_responses_are_in_the_document():
    table = RouteTable()

    @table.route("POST", "/things", summary="make a thing", auth="pat", response=Done, responses={202: Queued})
    async def make(request):
        raise AssertionError("not called")

    doc = build_openapi(table.specs, "1")
    responses = doc["paths"]["/things"]["post"]["responses"]
    assert list(responses) == ["200", "202", "default"]
    assert responses["202"] == {"description": "Accepted", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}}}
    assert doc["components"]["schemas"]["Queued"]["required"] == ["job_id"]
    from openapi_spec_validator import validate
    validate(doc)


@pytest.mark.parametrize("status", [200, 304, 404, 500])
def test_only_other_2xx_answers_may_be_declared(status):
    with pytest.raises(ValueError, match="responses="):
        RouteTable().route("GET", "/x", summary="x", auth="pat", responses={status: Queued})


def test_batch_enrolment_declares_its_202_job_answer():
    from gateway.app import ROUTE_TABLES
    doc = build_openapi([s for t in ROUTE_TABLES for s in t.specs], "1")
    for path in ("/api/enroll", "/agent-vb-mw/api/enroll"):
        responses = doc["paths"][path]["post"]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/BatchEnrolResponse")
        assert responses["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/EnrolJobAccepted")
    assert {"job_id", "status", "status_url"} <= set(doc["components"]["schemas"]["EnrolJobAccepted"]["required"])
    assert "get" in doc["paths"]["/api/enroll/jobs/{job_id}"]
