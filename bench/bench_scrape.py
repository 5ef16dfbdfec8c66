"""What /metrics and GET /v1/runs cost as the number of active runs grows (issue #16.8).

Seeds --runs active runs of --steps steps each straight into an embedded Redis (pipelined, not
through HTTP: seeding 10 million reports through the API would take the afternoon), each with
its analysis gauges as the background refresher leaves them, then times the service's scrape
and run list (in process: the work of the route, its Redis reads and the rendering, without
the HTTP hop) and prints their growth per run. Side by side, at the smallest size only (it grows
with the run length as well), the previous code: run after run, five dependent reads each and
the analysis at scrape time.

    python bench/bench_scrape.py --runs 100,1000,5000 --steps 2000 --http

--http also starts a real `entmon serve` on the seeded Redis and times the two routes through
HTTP (what Prometheus waits for: the route, uvicorn and sending the body).

Memory: about 0.35 KB of Redis per report (1 rank, compact reports; the latest step's details
are full), so 5,000 x 2,000 steps is about 3.5 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_analysis_scrape import timed
from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count
from monitor.analysis import AnalysisParams
from monitor.api_models import RunsResponse, RunSummary
from monitor.embedded_redis import EmbeddedRedis, free_port
from monitor.gauges import SCRAPE_MAX_POINTS, AnalysisGauges
from monitor.metrics import RunSnapshot, exposition
from monitor.routers.metrics import _snapshots
from monitor.routers.runs import _summary
from monitor.run_analysis import run_analysis
from monitor.store import RUNS_KEY, RunKeys, Store

STATS = '"entropy":{h},"reward":{r},"cov_mean":0.001,"cov_std":0.05,"tokens":20000'


def scalars(step: int) -> str:
    h = 0.1 + 0.9 / (1 + step / 500)
    stats = STATS.format(h=h, r=1 - 0.35 * 2.718**h)
    head = f'{{"step":{step},"rank":0,"world_size":1,"control_version":0'
    return f'{head},"stats":{{{stats}}},"user":{{}}}}'


def details(full: bool) -> str:
    if not full:  # only the latest step's histograms are read by the scrape
        return '{"histograms":{},"top_tokens":[]}'
    ent = [1] * bucket_count(ENTROPY_LAYOUT)
    cov = [1] * bucket_count(COVARIANCE_LAYOUT)
    return json.dumps(
        {
            "histograms": {
                "entropy": {"counts": ent, "layout": ENTROPY_LAYOUT, "nonfinite": 0},
                "covariance": {"counts": cov, "layout": COVARIANCE_LAYOUT, "nonfinite": 0},
            },
            "top_tokens": [{"cov": 1.0, "logp": -1.0, "advantage": 1.0, "text": "tok"}] * 16,
        }
    )


async def seed(redis: Redis, first: int, count: int, steps: int) -> None:
    """Runs first..first+count-1, each `steps` steps on one rank, in chunks of pipelined calls."""
    now = time.time()
    gauges = AnalysisGauges(steps - 1, 0, 0.62, True, 0.97, "declining", frozenset(), 1.0).to_hash()
    docs = {f"{s}:0": scalars(s) for s in range(steps)}
    thin, full = details(False), details(True)
    detail_docs = {f: thin for f in docs} | {f"{steps - 1}:0": full}
    index = {f"{s}:0": s for s in range(steps)}
    for lo in range(first, first + count, 10):
        pipe = redis.pipeline(transaction=False)
        for i in range(lo, min(lo + 10, first + count)):
            run = f"run-{i}"
            k = RunKeys.of(run)
            pipe.hset(k.scalars, mapping=docs)  # type: ignore[arg-type]
            pipe.hset(k.details, mapping=detail_docs)  # type: ignore[arg-type]
            pipe.zadd(k.index, index)  # type: ignore[arg-type]
            meta = {"reports": steps, "tokens": 20000 * steps, "last_step": steps - 1}
            pipe.hset(k.meta, mapping=meta | {"last_report_time": now})  # type: ignore[arg-type]
            pipe.hset(k.gauges, mapping=gauges)  # type: ignore[arg-type]
            pipe.zadd(RUNS_KEY, {run: now})
        await pipe.execute()


async def scrape(store: Store) -> bytes:  # the /metrics route's work
    return exposition(await _snapshots(store, await store.active_runs(3600.0)))


async def run_list(store: Store) -> bytes:  # GET /v1/runs' work, serialisation included
    reads = await store.run_reads(await store.run_names(), details=False, ranks=True)
    runs = RunsResponse(runs=[_summary(r) for r in reads if r is not None])
    return runs.model_dump_json().encode()


async def previous_scrape(store: Store) -> bytes:
    """The code before #16.8: each run read in turn, analysed at scrape time."""
    snaps = []
    for run in await store.active_runs(3600.0):
        latest = await store.latest(run)
        analysis = await run_analysis(store, run, AnalysisParams(), SCRAPE_MAX_POINTS)
        snaps.append(
            RunSnapshot(
                run,
                latest=latest,
                meta=await store.meta(run),
                control=await store.control(run),
                start_entropy=analysis.collapse.start_entropy,
                histograms=await store.histograms(run, latest.step) if latest else {},
            )
        )
    return exposition(snaps)


async def previous_run_list(store: Store) -> bytes:
    runs = []
    for run in await store.run_names():
        meta = await store.meta(run)
        latest = await store.latest(run)
        runs.append(
            RunSummary(
                run=run,
                first_step=await store.first_step(run),
                last_step=int(meta["last_step"]),
                last_report_time=float(meta["last_report_time"]),
                reports=int(meta.get("reports", 0)),
                latest=latest,
                ranks=await store.rank_status(run, world_size=latest.ranks if latest else 1),
            )
        )
    return RunsResponse(runs=runs).model_dump_json().encode()


def start_service(redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """`entmon serve` on the seeded Redis, open access on loopback, ready to answer."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    env |= {"ENTMON_REDIS_URL": redis_url, "ENTMON_REDIS_TIMEOUT_S": "60"}
    command = [sys.executable, "-m", "entmon.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"entmon serve did not get ready on {redis_url}")


async def over_http(url: str, path: str, repeat: int) -> tuple[float, int]:
    """Median time of GET url+path, and the body's size."""
    size = 0
    async with httpx.AsyncClient(timeout=600) as http:

        async def get() -> None:
            nonlocal size
            response = await http.get(url + path)
            response.raise_for_status()
            size = len(response.content)

        return await timed(get, repeat), size


async def main(sizes: list[int], steps: int, repeat: int, http: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp), appendfsync="everysec", extra_args=("--appendonly", "no")) as srv,
    ):
        redis = Redis.from_url(srv.url, decode_responses=True, socket_timeout=600)
        store = Store(redis, retention_steps=steps + 1)
        seeded = 0
        rows = []
        service, url = start_service(srv.url) if http else (None, "")
        for n in sorted(sizes):
            start = time.perf_counter()
            await seed(redis, seeded, n - seeded, steps)
            seeded = n
            seeding = time.perf_counter() - start
            memory = int((await redis.info("memory"))["used_memory"]) / 2**30
            cpu = time.process_time()
            metrics_s = await timed(lambda: scrape(store), repeat)
            metrics_cpu = (time.process_time() - cpu) / repeat
            cpu = time.process_time()
            runs_s = await timed(lambda: run_list(store), repeat)
            runs_cpu = (time.process_time() - cpu) / repeat
            rows.append((n, metrics_s, runs_s))
            figures[f"metrics_{n}"], figures[f"runs_{n}"] = metrics_s, runs_s
            print(
                f"{n:>6} runs x {steps} steps: /metrics {metrics_s:7.3f} s (service CPU "
                f"{metrics_cpu:.3f} s)   GET /v1/runs {runs_s:7.3f} s (CPU {runs_cpu:.3f} s)   "
                f"(seeded in {seeding:.0f} s, Redis {memory:.2f} GiB, "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            if service is not None:
                metrics_http, body = await over_http(url, "/metrics", repeat)
                runs_http, _ = await over_http(url, "/v1/runs", repeat)
                figures[f"metrics_http_{n}"], figures[f"runs_http_{n}"] = metrics_http, runs_http
                print(
                    f"{'':>6} through HTTP (entmon serve): /metrics {metrics_http:7.3f} s "
                    f"({body / 1e6:.1f} MB)   GET /v1/runs {runs_http:7.3f} s   "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            if n == min(sizes):
                old_metrics = await timed(lambda: previous_scrape(store), 1)
                old_runs = await timed(lambda: previous_run_list(store), 1)
                print(
                    f"{'':>6} previous code at {n} runs: /metrics {old_metrics:7.3f} s "
                    f"(ratio previous / now: {old_metrics / metrics_s:.1f}x)   GET /v1/runs "
                    f"{old_runs:7.3f} s (ratio {old_runs / runs_s:.1f}x)",
                    flush=True,
                )
        if len(rows) > 1:
            (n0, m0, r0), (n1, m1, r1) = rows[0], rows[-1]
            per_metrics, per_runs = (m1 - m0) / (n1 - n0), (r1 - r0) / (n1 - n0)
            figures["metrics_per_run"], figures["runs_per_run"] = per_metrics, per_runs
            print(
                f"growth per run ({n0} -> {n1} runs): /metrics {per_metrics * 1e3:.3f} ms, "
                f"GET /v1/runs {per_runs * 1e3:.3f} ms"
            )
        await redis.aclose()
        if service is not None:
            service.terminate()
            service.wait(30)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default="100,1000,5000", help="comma-separated run counts")
    parser.add_argument("--steps", type=int, default=2000, help="steps per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--http", action="store_true", help="also time a real entmon serve")
    args = parser.parse_args()
    asyncio.run(main([int(n) for n in args.runs.split(",")], args.steps, args.repeat, args.http))
