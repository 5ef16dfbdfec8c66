from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from monitor.analysis import AnalysisParams
from monitor.deps import SettingsDep, StoreDep
from monitor.embedded_redis import read_status
from monitor.metrics import RunSnapshot, exposition, redis_families
from monitor.routers.analysis import run_analysis
from monitor.store import Store

router = APIRouter(tags=["metrics"])
# The scrape analyses each active run on its first and last steps plus this many sampled
# between: bounded whatever the run's length, and cheaper than the API's default of 2000
# because it repeats for every active run (bench/bench_analysis_scrape.py measures both).
SCRAPE_MAX_POINTS = 500


async def _snapshot(store: Store, run: str) -> RunSnapshot:
    latest = await store.latest(run)
    analysis = await run_analysis(store, run, AnalysisParams(), SCRAPE_MAX_POINTS)
    return RunSnapshot(
        run,
        latest=latest,
        meta=await store.meta(run),
        control=await store.control(run),
        start_entropy=analysis.collapse.start_entropy,  # the analysis' start: the two agree
        histograms=await store.histograms(run, latest.step) if latest else {},
        analysis=analysis,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(store: StoreDep, settings: SettingsDep) -> Response:
    """Prometheus exposition; runs silent for longer than stale_after_s are left out. While
    Redis is unreachable it still answers, with the service's own metrics and entmon_redis_up 0,
    so the outage shows in Prometheus."""
    try:
        runs = await store.active_runs(settings.stale_after_s)
        snapshots = [await _snapshot(store, run) for run in runs]
    except (RedisError, OSError):
        snapshots, reachable = [], False
    else:
        reachable = True
    status_file = settings.embedded_status_file
    supervisor = read_status(status_file) if status_file else None
    body = exposition(snapshots, redis_families(reachable, supervisor))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
