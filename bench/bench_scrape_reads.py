"""/metrics and GET /v1/runs of one checkout against an already seeded Redis, with the Redis
side: its CPU time and the commands it ran (INFO commandstats before and after each call).
Run it once per checkout on the same Redis to compare code side by side on the same data:

    redis-server --port 16399 --save "" --appendonly no &
    PYTHONPATH=. python bench/bench_scrape_reads.py redis://127.0.0.1:16399/0 --seed 5000
    PYTHONPATH=/path/to/other/checkout python /this/checkout/bench/bench_scrape_reads.py \\
        redis://127.0.0.1:16399/0 --label before

The routes' work is bench.bench_scrape's scrape and run_list of the checkout on PYTHONPATH
(imported from there, so an older checkout is measured with its own code). --seed seeds runs
of --steps steps (bench.bench_scrape.seed) until the Redis holds that many. Best of --repeat
by wall time; the load average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from redis.asyncio import Redis

from bench.bench_scrape import run_list, scrape, seed
from monitor.store import RUNS_KEY, Store


async def redis_side(redis: Redis) -> tuple[int, int, float]:
    """Commands run (INFO left out), script calls among them, CPU seconds."""
    calls: dict[str, Any] = await redis.info("commandstats")
    cpu = await redis.info("cpu")
    total = sum(v["calls"] for k, v in calls.items() if k != "cmdstat_info")
    scripts = calls.get("cmdstat_evalsha", {}).get("calls", 0)
    return total, scripts, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def main(url: str, label: str, repeat: int, runs: int, steps: int) -> None:
    redis = Redis.from_url(url, decode_responses=True, socket_timeout=600)
    store = Store(redis, retention_steps=steps + 1)
    have = await redis.zcard(RUNS_KEY)
    if runs > have:
        await seed(redis, have, runs - have, steps)
    n = await redis.zcard(RUNS_KEY)
    for name, route in (("/metrics", scrape), ("GET /v1/runs", run_list)):
        await route(store)  # scripts loaded, connections open
        best: tuple[float, float, float, int, int] | None = None
        for _ in range(repeat):
            c0, s0, r0 = await redis_side(redis)
            wall, cpu = time.perf_counter(), time.process_time()
            await route(store)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            c1, s1, r1 = await redis_side(redis)
            row = (wall, cpu, r1 - r0, c1 - c0, s1 - s0)
            best = row if best is None or row[0] < best[0] else best
        assert best is not None
        wall, cpu, redis_cpu, commands, scripts = best
        print(
            f"{label:7} {n} runs {name:13} wall {wall:6.3f} s  service CPU {cpu:6.3f} s  "
            f"Redis CPU {redis_cpu:5.3f} s  commands {commands} (script calls {scripts})  "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="a Redis holding bench.bench_scrape's runs (or --seed)")
    parser.add_argument("--label", default="this")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed runs until there are this many")
    parser.add_argument("--steps", type=int, default=2000, help="steps per seeded run")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.label, args.repeat, args.seed, args.steps))
