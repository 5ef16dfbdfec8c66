from __future__ import annotations

import statistics

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.deps import SettingsDep, StoreDep
from monitor.metrics import RunSnapshot, exposition
from monitor.store import Store

router = APIRouter(tags=["metrics"])
START_STEPS = 5  # entropy "at start" is the median of the run's first steps


async def _snapshot(store: Store, run: str) -> RunSnapshot:
    latest = await store.latest(run)
    start = await store.first_steps(run, START_STEPS)
    entropies = [float(e) for p in start if (e := p.stats.get("entropy")) is not None]
    return RunSnapshot(
        run,
        latest=latest,
        meta=await store.meta(run),
        control=await store.control(run),
        start_entropy=statistics.median(entropies) if entropies else None,
        histograms=await store.histograms(run, latest.step) if latest else {},
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(store: StoreDep, settings: SettingsDep) -> Response:
    """Prometheus exposition; runs silent for longer than stale_after_s are left out."""
    runs = await store.active_runs(settings.stale_after_s)
    body = exposition([await _snapshot(store, run) for run in runs])
    return Response(body, media_type=CONTENT_TYPE_LATEST)
