from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from monitor.deps import Reader, RunPath, StoreDep
from monitor.metrics import REPORTS_INGESTED
from monitor.routers import COMMON_RESPONSES
from monitor.schemas import IngestResponse, ReportBody

router = APIRouter(prefix="/v1/runs", tags=["reports"], responses=COMMON_RESPONSES)


@router.post("/{run}/reports")
async def ingest(
    run: RunPath,
    store: StoreDep,
    _: Reader,
    body: Annotated[ReportBody, Body()],
) -> IngestResponse:
    """Store one step report or a batch. Idempotent per (run, rank, step): a report already
    stored is acknowledged as a duplicate and left untouched. Answers the run's control."""
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
