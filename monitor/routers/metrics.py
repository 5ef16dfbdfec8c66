from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from monitor.analysis import AnalysisParams
from monitor.deps import SettingsDep, StoreDep
from monitor.metrics import RunSnapshot, exposition
from monitor.run_analysis import run_analysis
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
    """Prometheus exposition; runs silent for longer than stale_after_s are left out."""
    runs = await store.active_runs(settings.stale_after_s)
    body = exposition([await _snapshot(store, run) for run in runs])
    return Response(body, media_type=CONTENT_TYPE_LATEST)
