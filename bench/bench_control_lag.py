"""Control lag: how many steps after a control change the training loop uses it.

A change is made (PUT /v1/runs/{run}/control, as the dashboard does) in the middle of step k;
the lag is the first step that ran with the new version, minus k. The best a step-boundary
design can do is 2: the answer to step k's report brings the change back, the boundary of
step k+1 applies it, step k+2 uses it. Steps are simulated by sleeping (the reporter's work is
real: a real `entmon serve` on an embedded Redis, default ReporterConfig unless told).

Two rows per step time: the default transport ("now"), and the same with
`flush_interval_s=0.25` (requests at most every 0.25 s: the batching the client had before a
lone report after a quiet spell went at once). The lag of the code as it was before the change
is obtained by running this file on that checkout (bench/README.md has both).

    .venv/bin/python bench/bench_control_lag.py [--step-times 0.02,0.1,1] [--changes 50,50,10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from client import Monitor, ReporterConfig
from monitor.embedded_redis import EmbeddedRedis
from tests.conftest import ServerProcess

MODES = ("vanilla", "clip_cov")
WARMUP_STEPS = 3


def measure(url: str, run: str, step_s: float, changes: int, config: ReporterConfig) -> list[int]:
    """Lags in steps of `changes` control changes, each made mid-step once the previous one is
    in use."""
    lags: list[int] = []
    with Monitor(run=run, url=url, config=config) as mon:
        step = 0
        pending: tuple[int, int] | None = None  # (version expected, step it was made in)
        version = 0
        while len(lags) < changes:
            if pending is not None and mon.control.version >= pending[0]:
                lags.append(step - pending[1])
                pending = None
            time.sleep(step_s / 2)
            if pending is None and step >= WARMUP_STEPS:
                r = httpx.put(
                    f"{url}/v1/runs/{run}/control",
                    json={"loss_mode": MODES[(version + 1) % 2], "reason": "lag bench"},
                    headers={"If-Match": f'"{version}"'},
                )
                r.raise_for_status()
                version = int(r.json()["version"])
                pending = (version, step)
            time.sleep(step_s / 2)
            mon.log(step, entropy=1.0)
            step += 1
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step-times", default="0.02,0.1,1", help="seconds per step")
    parser.add_argument("--changes", default="50,50,10", help="changes per step time")
    args = parser.parse_args()
    step_times = [float(x) for x in args.step_times.split(",")]
    changes = [int(x) for x in args.changes.split(",")]
    configs = {"now": ReporterConfig(), "flush 0.25 s": ReporterConfig(flush_interval_s=0.25)}
    print("control lag in steps (2 = used from step k+2 for a change made during step k)")
    print(f"{'step s':>7} {'transport':<14} {'changes':>7} {'median':>7} {'worst':>6} {'k+2 %':>6}")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        env = {"ENTMON_REDIS_URL": redis.url, "ENTMON_DATA_DIR": tmp}
        server = ServerProcess(env).start()
        try:
            for i, (step_s, n) in enumerate(zip(step_times, changes, strict=True)):
                for j, (name, config) in enumerate(configs.items()):
                    lags = measure(server.url, f"lag-{i}-{j}", step_s, n, config)
                    at_best = 100.0 * sum(1 for lag in lags if lag <= 2) / len(lags)
                    print(
                        f"{step_s:>7g} {name:<14} {n:>7} {statistics.median(lags):>7g} "
                        f"{max(lags):>6} {at_best:>5.0f}%",
                        flush=True,
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
