from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from monitor.analysis import Analysis, AnalysisParams
from monitor.deps import ExistingRun, Ingest, StoreDep
from monitor.routers import COMMON_RESPONSES, MAX_POINTS_LIMIT, NOT_FOUND
from monitor.run_analysis import DEFAULT_MAX_POINTS, run_analysis

router = APIRouter(prefix="/v1/runs", tags=["analysis"], responses=COMMON_RESPONSES | NOT_FOUND)


class AnalysisQuery(AnalysisParams):
    max_points: int = Field(
        DEFAULT_MAX_POINTS,
        ge=10,
        le=MAX_POINTS_LIMIT,
        description="steps sampled between the run's first and last steps when it is long",
    )


@router.get("/{run}/analysis")
async def get_analysis(
    run: ExistingRun, store: StoreDep, _: Ingest, query: Annotated[AnalysisQuery, Query()]
) -> Analysis:
    """The entropy-performance law (a, b, R^2, the predicted ceiling and the early fit's track
    record), collapse state, the Delta H vs covariance check, and intervention health. Rules
    and formulas: monitor/ANALYSIS.md. Sections without enough data say so."""
    params = AnalysisParams.model_validate(query.model_dump(exclude={"max_points"}))
    return await run_analysis(store, run, params, query.max_points)
