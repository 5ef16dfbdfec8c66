from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from monitor.deps import Reader, RunPath, StoreDep
from monitor.metrics import REPORTS_INGESTED
from monitor.report_schema import ReportError, body_json_schema, decode_reports
from monitor.routers import COMMON_RESPONSES
from monitor.schemas import IngestResponse

router = APIRouter(prefix="/v1/runs", tags=["reports"], responses=COMMON_RESPONSES)

# The body is decoded and validated in one pass by msgspec (monitor/report_schema.py); its schema
# is published by hand (main.py adds REPORT_BODY_DEFS to the OpenAPI components).
_schema, REPORT_BODY_DEFS = body_json_schema("#/components/schemas/{name}")
REPORT_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _schema}}}
}


@router.post("/{run}/reports", openapi_extra=REPORT_BODY_OPENAPI)
async def ingest(run: RunPath, store: StoreDep, _: Reader, request: Request) -> IngestResponse:
    """Store one step report or a batch. Idempotent per (run, rank, step): a report already
    stored is acknowledged as a duplicate and left untouched. Answers the run's control."""
    try:
        reports = decode_reports(await request.body())
    except ReportError as e:
        raise RequestValidationError([{"type": "value_error", "loc": e.loc, "msg": str(e)}]) from e
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
