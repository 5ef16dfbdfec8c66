from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from entmon.wire.layouts import HISTOGRAM_LAYOUTS, LAYOUTS
from entmon.wire.stats import STAT_NAMES
from monitor.api_models import (
    HistogramSeries,
    HistogramStep,
    RunsResponse,
    RunSummary,
    StepsResponse,
    TopTokensResponse,
)
from monitor.deps import Admin, ExistingRun, Ingest, RunPath, StoreDep, run_not_found
from monitor.routers import COMMON_RESPONSES, MAX_POINTS_LIMIT, NOT_FOUND
from monitor.store import Store

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=COMMON_RESPONSES | NOT_FOUND)
_STAT = "|".join(STAT_NAMES)
STATS_PATTERN = f"^({_STAT})(,({_STAT}))*$"  # in the schema, so clients see the valid names


async def _summary(store: Store, run: str) -> RunSummary:
    meta = await store.meta(run)
    if not meta:
        raise run_not_found(run)
    latest = await store.latest(run)
    return RunSummary(
        run=run,
        first_step=await store.first_step(run),
        last_step=int(meta["last_step"]) if "last_step" in meta else None,
        last_report_time=float(meta["last_report_time"]) if "last_report_time" in meta else None,
        reports=int(meta.get("reports", 0)),
        latest=latest,
        ranks=await store.rank_status(run, world_size=latest.ranks if latest else 1),
    )


@router.get("")
async def list_runs(store: StoreDep, _: Ingest) -> RunsResponse:
    """Every run, most recently active first, with its latest merged step."""
    return RunsResponse(runs=[await _summary(store, run) for run in await store.run_names()])


@router.get("/{run}")
async def get_run(run: RunPath, store: StoreDep, _: Ingest) -> RunSummary:
    return await _summary(store, run)


@router.get("/{run}/steps")
async def get_steps(
    run: RunPath,
    store: StoreDep,
    _: Ingest,
    start: Annotated[int | None, Query(ge=0, description="first step, inclusive")] = None,
    end: Annotated[int | None, Query(ge=0, description="last step, inclusive")] = None,
    every: Annotated[int | None, Query(ge=1, description="keep every n-th step")] = None,
    max_points: Annotated[
        int | None, Query(ge=2, le=MAX_POINTS_LIMIT, description="downsample to at most this many")
    ] = None,
    stats: Annotated[
        str | None,
        Query(
            pattern=STATS_PATTERN,
            description="comma-separated statistics to return (default: all)",
        ),
    ] = None,
) -> StepsResponse:
    """Steps merged over ranks, in step order. Downsampling keeps every n-th step (widened to
    stay within max_points) and always the last step."""
    lo = -math.inf if start is None else start
    hi = math.inf if end is None else end
    wanted = None if stats is None else frozenset(stats.split(","))
    points = await store.steps(run, lo, hi, every=every or 1, max_points=max_points, stats=wanted)
    if not points and not await store.meta(run):  # checked only then: the common case reads less
        raise run_not_found(run)
    return StepsResponse(run=run, steps=points)


@router.get("/{run}/histograms")
async def get_histograms(
    run: ExistingRun,
    store: StoreDep,
    _: Ingest,
    name: Annotated[Literal["entropy", "covariance"], Query(description="which histogram")],
    start: Annotated[int | None, Query(ge=0)] = None,
    end: Annotated[int | None, Query(ge=0)] = None,
    every: Annotated[int | None, Query(ge=1)] = None,
    max_points: Annotated[int | None, Query(ge=2, le=MAX_POINTS_LIMIT)] = None,
) -> HistogramSeries:
    """One histogram per step, counts added over ranks, on its fixed layout."""
    lo = -math.inf if start is None else start
    hi = math.inf if end is None else end
    layout = HISTOGRAM_LAYOUTS[name]
    rows = await store.histogram_series(run, name, lo, hi, every=every or 1, max_points=max_points)
    return HistogramSeries(
        run=run,
        name=name,
        layout=layout,
        upper_bounds=list(LAYOUTS[layout]),
        steps=[
            HistogramStep(step=s, counts=h["counts"], nonfinite=h["nonfinite"]) for s, h in rows
        ],
    )


@router.get("/{run}/top_tokens")
async def get_top_tokens(
    run: ExistingRun,
    store: StoreDep,
    _: Ingest,
    step: Annotated[int | None, Query(ge=0, description="default: the latest step")] = None,
) -> TopTokensResponse:
    """The highest-covariance tokens the ranks sent for one step."""
    if step is None:
        latest = await store.latest(run)
        if latest is None:
            return TopTokensResponse(run=run, step=0, tokens=[])
        step = latest.step
    return TopTokensResponse(run=run, step=step, tokens=await store.top_tokens(run, step))


@router.delete("/{run}", status_code=204)
async def delete_run(run: RunPath, store: StoreDep, _: Admin) -> None:
    """Delete every key of the run (history, control, audit). Needs an admin token."""
    if not await store.delete_run(run):
        raise run_not_found(run)
