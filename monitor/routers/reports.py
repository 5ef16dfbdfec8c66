from __future__ import annotations

from fastapi import APIRouter, Body, HTTPException

from monitor.deps import Reader, RunPath, StoreDep
from monitor.metrics import REPORTS_INGESTED
from monitor.schemas import MAX_REPORTS_PER_REQUEST, IngestResponse, StepReport

router = APIRouter(prefix="/v1/runs", tags=["reports"])


@router.post("/{run}/reports")
async def ingest(
    run: RunPath,
    store: StoreDep,
    _: Reader,
    body: StepReport | list[StepReport] = Body(),  # noqa: B008 (FastAPI idiom)
) -> IngestResponse:
    """Store one step report or a batch. Idempotent per (run, rank, step): a report already
    stored is acknowledged as a duplicate and left untouched. Answers the run's control."""
    reports = body if isinstance(body, list) else [body]
    if len(reports) > MAX_REPORTS_PER_REQUEST:
        raise HTTPException(422, f"body: at most {MAX_REPORTS_PER_REQUEST} reports per request")
    flags = await store.ingest(run, reports) if reports else []
    accepted = sum(flags)
    REPORTS_INGESTED.labels("accepted").inc(accepted)
    REPORTS_INGESTED.labels("duplicate").inc(len(flags) - accepted)
    nonfinite = sorted({f"step {r.step}: {name}" for r in reports for name in r.nonfinite_fields()})
    return IngestResponse(
        accepted=accepted,
        duplicates=len(flags) - accepted,
        nonfinite=nonfinite,
        control=await store.control(run),
    )
