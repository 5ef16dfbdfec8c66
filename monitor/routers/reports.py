from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError

from monitor.api_models import ErrorDetail, IngestResponse
from monitor.auth import Role, authenticate
from monitor.deps import RunPath
from monitor.metrics import REPORTS_INGESTED, REPORTS_REJECTED
from monitor.report_codec import ReportError, body_json_schema, decode_reports
from monitor.routers import COMMON_RESPONSES
from monitor.settings import Settings
from monitor.store import DUPLICATE, EXPIRED, STORED, Store, TooManyRuns

router = APIRouter(prefix="/v1/runs", tags=["reports"], responses=COMMON_RESPONSES)

# The body is decoded and validated in one pass by msgspec (monitor/report_codec.py); its schema
# is published by hand (main.py adds REPORT_BODY_DEFS to the OpenAPI components).
_schema, REPORT_BODY_DEFS = body_json_schema("#/components/schemas/{name}")
REPORT_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _schema}}}
}


# The hot path, so leaner than the other routes: settings, store and the token are read here
# rather than through FastAPI dependencies, and the answer is serialised once, not validated
# again; together about a third of a single report's CPU (bench/bench_ingest.py).
@router.post(
    "/{run}/reports",
    response_model=IngestResponse,
    openapi_extra=REPORT_BODY_OPENAPI,
    responses={429: {"model": ErrorDetail, "description": "a new run beyond ENTMON_MAX_RUNS"}},
)
async def ingest(run: RunPath, request: Request) -> Response:
    """Store one step report or a batch. Idempotent per (run, rank, step): a report already
    stored is acknowledged as a duplicate and left untouched. Answers the run's control."""
    settings: Settings = request.app.state.settings
    store: Store = request.app.state.store
    authenticate(request, settings, Role.INGEST)
    try:
        reports = decode_reports(await request.body())
    except ReportError as e:
        raise RequestValidationError([{"type": "value_error", "loc": e.loc, "msg": str(e)}]) from e
    if reports:
        try:
            flags, control, thermostat = await store.ingest(run, reports)
        except TooManyRuns as e:
            REPORTS_REJECTED.labels("too_many_runs").inc()
            raise HTTPException(429, str(e)) from None
    else:  # an empty batch must not create a run
        flags, control, thermostat = [], await store.control(run), False
    accepted, expired = flags.count(STORED), flags.count(EXPIRED)
    if accepted:
        request.app.state.gauges.note(run)  # its analysis gauges, off this request's path
    if thermostat:  # a duplicate too: a resent last report still completes its step
        steps = {r.step for r, flag in zip(reports, flags, strict=True) if flag != EXPIRED}
        request.app.state.thermostat.note(run, steps)  # decided off this request's path
    REPORTS_INGESTED.labels("accepted").inc(accepted)
    REPORTS_INGESTED.labels("duplicate").inc(flags.count(DUPLICATE))
    REPORTS_INGESTED.labels("expired").inc(expired)
    # Only what was stored: a duplicate's copy was discarded, its NaN is not the run's.
    nonfinite = sorted(
        {
            f"step {r.step}: {name}"
            for r, flag in zip(reports, flags, strict=True)
            if flag == STORED
            for name in r.nonfinite_fields()
        }
    )
    answer = IngestResponse(
        accepted=accepted,
        duplicates=flags.count(DUPLICATE),
        expired=expired,
        nonfinite=nonfinite,
        control=control,
    )
    return Response(answer.model_dump_json(), media_type="application/json")
