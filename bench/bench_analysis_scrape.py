"""What one run's analysis costs at each /metrics scrape: the bounded sample the service reads
(Store.sampled_steps: first and last steps in full, --points sampled between) against the plain
alternative (read every step, then analyse), on one run of --steps steps in an embedded Redis.

    python bench/bench_analysis_scrape.py --steps 100000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.analysis import AnalysisParams, analyse
from monitor.embedded_redis import EmbeddedRedis
from monitor.gauges import SCRAPE_MAX_POINTS
from monitor.report_codec import StepReport, StepStats
from monitor.run_analysis import run_analysis
from monitor.store import RunKeys, Store

RUN = "bench"
BATCH = 1000


def report(t: int, rng: random.Random) -> StepReport:
    h = 0.1 + 0.9 * math.exp(-t / 2000)
    stats = StepStats(
        entropy=h,
        reward=1.0 - 0.35 * math.exp(h) + rng.gauss(0, 0.01),
        cov_mean=1e-3,
        cov_std=0.05,
        cov_max=3.0,
        cov_top_concentration=1800.0,
        tokens=20_000,
        candidates=40,
        detached=4,
        abs_log_ratio_mean=0.02,
        ppo_clip_frac=0.01,
        policy_loss=0.1,
        response_length=500.0,
    )
    return StepReport(step=t, stats=stats, control_version=0)


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(steps: int, repeat: int, points: int) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedRedis(Path(tmp), appendfsync="everysec") as server,
    ):
        redis = Redis.from_url(server.url, decode_responses=True)
        store = Store(redis, retention_steps=steps + 1)
        rng = random.Random(0)
        start = time.perf_counter()
        for lo in range(0, steps, BATCH):
            await store.ingest(RUN, [report(t, rng) for t in range(lo, min(lo + BATCH, steps))])
        print(f"ingested {steps} steps in {time.perf_counter() - start:.1f} s")
        params = AnalysisParams()
        control = await store.control(RUN)

        async def sampled() -> object:
            return await run_analysis(store, RUN, params, points)

        async def full() -> object:
            return analyse(RUN, await store.steps(RUN), control, params)

        async def full_read_only() -> object:
            return await store.steps(RUN)

        async def index_only() -> object:  # the cost that stays O(steps) even without merging
            return await redis.zrangebyscore(RunKeys.of(RUN).index, "-inf", "+inf", withscores=True)

        ours = await timed(sampled, repeat)
        theirs = await timed(full, repeat)
        read = await timed(full_read_only, repeat)
        n = len((await store.sampled_steps(RUN, head=36, tail=51, max_points=points))[0])
        print(f"sampled read + analysis ({n} steps):  {ours * 1e3:8.1f} ms")
        print(f"full read + analysis ({steps} steps): {theirs * 1e3:8.1f} ms")
        print(f"  of which the full read:            {read * 1e3:8.1f} ms")
        print(f"ratio full / sampled: {theirs / ours:.1f}x")
        index = await timed(index_only, repeat)
        print(f"(reading the whole index alone: {index * 1e3:.1f} ms)")
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--points", type=int, default=SCRAPE_MAX_POINTS, help="sampled steps")
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.repeat, args.points))
