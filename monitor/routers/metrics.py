from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from monitor.deps import SettingsDep, StoreDep
from monitor.embedded_redis import read_status
from monitor.gauges import SCRAPE_REFRESH_MAX, AnalysisGauges, refresh
from monitor.metrics import RunSnapshot, exposition, redis_families
from monitor.store import RunRead, Store
from monitor.thermostat.record import thermostat_gauges

router = APIRouter(tags=["metrics"])


async def _snapshots(store: Store, runs: list[str]) -> list[RunSnapshot]:
    """Every active run in one concurrent pass of one script call each; the analysis gauges
    come from Redis (monitor/gauges.py), a few missing or stale ones are analysed here."""
    reads = [r for r in await store.run_reads(runs, details=True, ranks=False) if r is not None]
    gauges: dict[str, AnalysisGauges | None] = {}
    stale: list[RunRead] = []
    for read in reads:
        g = AnalysisGauges.from_hash(read.gauges)
        gauges[read.run] = g
        last = int(read.meta["last_step"]) if "last_step" in read.meta else None
        if g is None or not g.describes(last, read.control.version):
            stale.append(read)
    for read in stale[:SCRAPE_REFRESH_MAX]:
        gauges[read.run] = await refresh(store, read.run) or gauges[read.run]
    snapshots = []
    for read in reads:
        g = gauges[read.run]
        snapshots.append(
            RunSnapshot(
                read.run,
                latest=read.latest,
                meta=read.meta,
                control=read.control,
                start_entropy=g.start_entropy if g else None,  # the analysis' start: they agree
                histograms=read.histograms,
                gauges=g,
                thermostat=thermostat_gauges(read.thermostat, read.control),
            )
        )
    return snapshots


@router.get("/metrics", include_in_schema=False)
async def metrics(store: StoreDep, settings: SettingsDep) -> Response:
    """Prometheus exposition; runs silent for longer than stale_after_s are left out. While
    Redis is unreachable it still answers, with the service's own metrics and entmon_redis_up 0,
    so the outage shows in Prometheus."""
    try:
        runs = await store.active_runs(settings.stale_after_s)
        snapshots = await _snapshots(store, runs)
    except (RedisError, OSError):
        snapshots, reachable = [], False
    else:
        reachable = True
    status_file = settings.embedded_status_file
    supervisor = read_status(status_file) if status_file else None
    body = exposition(snapshots, redis_families(reachable, supervisor))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
