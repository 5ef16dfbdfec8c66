from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from monitor.deps import Reader, RunPath, StoreDep
from monitor.schemas import Control, RunsResponse, RunSummary, StepsResponse
from monitor.store import Store

router = APIRouter(prefix="/v1/runs", tags=["runs"])
MAX_POINTS_LIMIT = 100_000


async def _summary(store: Store, run: str) -> RunSummary:
    meta = await store.meta(run)
    if not meta:
        raise HTTPException(404, f"run {run!r} not found")
    first = await store.step_numbers(run)
    return RunSummary(
        run=run,
        first_step=first[0] if first else None,
        last_step=int(meta["last_step"]) if "last_step" in meta else None,
        last_report_time=float(meta["last_report_time"]) if "last_report_time" in meta else None,
        reports=int(meta.get("reports", 0)),
        latest=await store.latest(run),
    )


@router.get("")
async def list_runs(store: StoreDep, _: Reader) -> RunsResponse:
    """Every run, most recently active first, with its latest merged step."""
    return RunsResponse(runs=[await _summary(store, run) for run in await store.run_names()])


@router.get("/{run}")
async def get_run(run: RunPath, store: StoreDep, _: Reader) -> RunSummary:
    return await _summary(store, run)


@router.get("/{run}/steps")
async def get_steps(
    run: RunPath,
    store: StoreDep,
    _: Reader,
    start: Annotated[int | None, Query(ge=0, description="first step, inclusive")] = None,
    end: Annotated[int | None, Query(ge=0, description="last step, inclusive")] = None,
    every: Annotated[int | None, Query(ge=1, description="keep every n-th step")] = None,
    max_points: Annotated[
        int | None, Query(ge=2, le=MAX_POINTS_LIMIT, description="downsample to at most this many")
    ] = None,
) -> StepsResponse:
    """Steps merged over ranks, in step order. Downsampling keeps every n-th step and the last."""
    if every is not None and max_points is not None:
        raise HTTPException(422, "every, max_points: give one of them, not both")
    lo = -math.inf if start is None else start
    hi = math.inf if end is None else end
    if max_points is not None:
        n = len(await store.step_numbers(run, lo, hi))
        every = max(1, math.ceil(n / (max_points - 1))) if n > max_points else 1
    points = await store.steps(run, lo, hi, every=every or 1)
    if not points and not await store.meta(run):
        raise HTTPException(404, f"run {run!r} not found")
    return StepsResponse(run=run, steps=points)


@router.get("/{run}/control")
async def get_control(run: RunPath, store: StoreDep, _: Reader, response: Response) -> Control:
    """The run's live control; the ETag is its version (send it back as If-Match to change it)."""
    control = await store.control(run)
    response.headers["ETag"] = f'"{control.version}"'
    return control
