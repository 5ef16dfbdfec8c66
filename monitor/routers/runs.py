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
from monitor.report_codec import MAX_STEP
from monitor.routers import COMMON_RESPONSES, MAX_POINTS_LIMIT, NOT_FOUND
from monitor.store import RunRead

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=COMMON_RESPONSES | NOT_FOUND)
_STAT = "|".join(STAT_NAMES)
STATS_PATTERN = f"^({_STAT})(,({_STAT}))*$"  # in the schema, so clients see the valid names
# The names of entmon.wire.layouts.HISTOGRAM_LAYOUTS (tests/test_contract.py checks)
HistogramName = Literal["entropy", "covariance", "response_length", "entropy_by_length"]


def _summary(read: RunRead) -> RunSummary:
    meta = read.meta
    return RunSummary(
        run=read.run,
        first_step=read.first_step,
        last_step=int(meta["last_step"]) if "last_step" in meta else None,
        last_report_time=float(meta["last_report_time"]) if "last_report_time" in meta else None,
        reports=int(meta.get("reports", 0)),
        latest=read.latest,
        ranks=read.ranks,  # validated into RankStatus
    )


@router.get("")
async def list_runs(store: StoreDep, _: Ingest) -> RunsResponse:
    """Every run, most recently active first, with its latest merged step. Read concurrently,
    one script call per run: the cost grows with the number of runs, not their length."""
    reads = await store.run_reads(await store.run_names(), details=False, ranks=True)
    return RunsResponse(runs=[_summary(r) for r in reads if r is not None])


@router.get("/{run}")
async def get_run(run: RunPath, store: StoreDep, _: Ingest) -> RunSummary:
    (read,) = await store.run_reads([run], details=False, ranks=True)
    if read is None:
        raise run_not_found(run)
    return _summary(read)


@router.get("/{run}/steps")
async def get_steps(
    run: RunPath,
    store: StoreDep,
    _: Ingest,
    start: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="first step, inclusive")
    ] = None,
    end: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="last step, inclusive")] = None,
    every: Annotated[
        int | None, Query(ge=1, le=MAX_STEP, description="keep every n-th step")
    ] = None,
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
    name: Annotated[HistogramName, Query(description="which histogram")],
    start: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    end: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    every: Annotated[int | None, Query(ge=1, le=MAX_STEP)] = None,
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
            HistogramStep(step=s, counts=h["counts"], nonfinite=h["nonfinite"], sums=h.get("sums"))
            for s, h in rows
        ],
    )


@router.get("/{run}/top_tokens")
async def get_top_tokens(
    run: ExistingRun,
    store: StoreDep,
    _: Ingest,
    step: Annotated[
        int | None, Query(ge=0, le=MAX_STEP, description="default: the latest step")
    ] = None,
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
