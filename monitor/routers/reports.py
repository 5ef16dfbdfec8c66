from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from monitor.deps import Reader, RunPath, StoreDep
from monitor.metrics import REPORTS_INGESTED
from monitor.routers import COMMON_RESPONSES
from monitor.schemas import IngestResponse, ReportBody

router = APIRouter(prefix="/v1/runs", tags=["reports"], responses=COMMON_RESPONSES)

# The body is parsed and validated in one pass by pydantic-core (validate_json), about twice as
# fast as FastAPI's json.loads then validate; its schema is published by hand (main.py adds
# REPORT_BODY_DEFS to the OpenAPI components).
REPORT_BODY = TypeAdapter(ReportBody)
_schema = REPORT_BODY.json_schema(ref_template="#/components/schemas/{model}")
REPORT_BODY_DEFS: dict[str, Any] = _schema.pop("$defs")
REPORT_BODY_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _schema}}}
}


@router.post("/{run}/reports", openapi_extra=REPORT_BODY_OPENAPI)
async def ingest(run: RunPath, store: StoreDep, _: Reader, request: Request) -> IngestResponse:
    """Store one step report or a batch. Idempotent per (run, rank, step): a report already
    stored is acknowledged as a duplicate and left untouched. Answers the run's control."""
    try:
        body = REPORT_BODY.validate_json(await request.body())
    except ValidationError as e:
        errors = e.errors(include_url=False)
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in errors]
        ) from e
    reports = body if isinstance(body, list) else [body]
    if reports:
        flags, control = await store.ingest(run, reports)
    else:  # an empty batch must not create a run
        flags, control = [], await store.control(run)
    accepted = sum(flags)
    REPORTS_INGESTED.labels("accepted").inc(accepted)
    REPORTS_INGESTED.labels("duplicate").inc(len(flags) - accepted)
    nonfinite = sorted({f"step {r.step}: {name}" for r in reports for name in r.nonfinite_fields()})
    return IngestResponse(
        accepted=accepted,
        duplicates=len(flags) - accepted,
        nonfinite=nonfinite,
        control=control,
    )
