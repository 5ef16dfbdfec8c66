from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field

from monitor.analysis import START_STEPS, Analysis, AnalysisParams, analyse
from monitor.deps import Reader, RunPath, StoreDep
from monitor.routers import COMMON_RESPONSES, NOT_FOUND
from monitor.store import Store

router = APIRouter(prefix="/v1/runs", tags=["analysis"], responses=COMMON_RESPONSES | NOT_FOUND)
DEFAULT_MAX_POINTS = 2000  # a long run is analysed on at most about this many sampled steps
MAX_POINTS_LIMIT = 100_000


class AnalysisQuery(AnalysisParams):
    max_points: int = Field(
        DEFAULT_MAX_POINTS,
        ge=10,
        le=MAX_POINTS_LIMIT,
        description="steps sampled between the run's first and last steps when it is long",
    )


async def run_analysis(
    store: Store, run: str, params: AnalysisParams, max_points: int = DEFAULT_MAX_POINTS
) -> Analysis:
    """Read a bounded window of the run (first and last steps in full, a sample between) and
    analyse it under the run's current control. Shared by the API and the /metrics scrape."""
    points, sampled = await store.sampled_steps(
        run,
        head=max(params.fit_steps, START_STEPS),
        tail=max(params.trend_points, params.health_steps) + 1,
        max_points=max_points,
    )
    return analyse(run, points, await store.control(run), params, sampled=sampled)


@router.get("/{run}/analysis")
async def get_analysis(
    run: RunPath, store: StoreDep, _: Reader, query: Annotated[AnalysisQuery, Query()]
) -> Analysis:
    """The entropy-performance law (a, b, R^2, the predicted ceiling and the early fit's track
    record), collapse state, the Delta H vs covariance check, and intervention health. Rules
    and formulas: monitor/ANALYSIS.md. Sections without enough data say so."""
    if not await store.meta(run):
        raise HTTPException(404, f"run {run!r} not found")
    params = AnalysisParams.model_validate(query.model_dump(exclude={"max_points"}))
    return await run_analysis(store, run, params, query.max_points)
