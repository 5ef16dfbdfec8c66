"""Time to first render of the run view for a long run, in a real browser.

Seeds a run of --steps steps (realistic reports with histograms and top tokens) into a real
`entmon serve`, starts the real dashboard and measures, in headless Debian chromium, the time
from navigation to the entropy chart drawn with the run's last step, and to every chart drawn.
Side by side: the default (the API downsamples to ENTMON_DASHBOARD_MAX_POINTS=1500 points) and
downsampling off (every step fetched and drawn).

    .venv/bin/python bench/bench_dashboard.py [--steps 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.realistic import realistic_report
from entmon.commands import dashboard_command
from monitor.embedded_redis import EmbeddedRedis, free_port

CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CHARTS = 6  # plotly charts on the run view


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up")


def seed(api: str, run: str, steps: int) -> None:
    batch = []
    for step in range(steps):
        r = realistic_report(step, 0, seed=step % 7)
        entropy = 0.05 + 1.5 * math.exp(-step / (steps / 5))
        r["stats"] |= {"entropy": entropy, "reward": -0.3 * math.exp(entropy) + 1.2}
        batch.append(r)
        if len(batch) == 64 or step == steps - 1:
            httpx.post(f"{api}/v1/runs/{run}/reports", json=batch, timeout=60).raise_for_status()
            batch = []


def first_render(url: str, last_step: int, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds to the entropy chart showing the last step, and to all charts, per repeat."""
    to_entropy, to_all = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for _ in range(repeat):
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            started = time.perf_counter()
            page.goto(url)
            page.wait_for_function(
                f"""() => {{
                    const el = document.querySelector('.js-plotly-plot');
                    return el && el.data && el.data[0] && el.data[0].x.at(-1) === {last_step};
                }}""",
                timeout=120_000,
            )
            to_entropy.append(time.perf_counter() - started)
            page.wait_for_function(
                f"() => document.querySelectorAll('.js-plotly-plot').length >= {CHARTS}",
                timeout=120_000,
            )
            to_all.append(time.perf_counter() - started)
            page.close()
        browser.close()
    return to_entropy, to_all


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        serve = ["serve", "--port", str(api_port), "--log-level", "warning"]
        server = subprocess.Popen(
            [sys.executable, "-m", "entmon.cli", *serve],
            env=clean | {"ENTMON_REDIS_URL": redis.url},
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"{api}/readyz")
            started = time.perf_counter()
            seed(api, "long", args.steps)
            print(f"seeded {args.steps} steps in {time.perf_counter() - started:.1f}s")
            for label, max_points in (("downsampled (default)", "1500"), ("all points", "1000000")):
                port = free_port()
                env = clean | {"ENTMON_URL": api, "ENTMON_DASHBOARD_MAX_POINTS": max_points}
                dash = subprocess.Popen(
                    dashboard_command(port), env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    wait_http(f"http://127.0.0.1:{port}/_stcore/health")
                    url = f"http://127.0.0.1:{port}/?run=long"
                    to_entropy, to_all = first_render(url, args.steps - 1, args.repeat)
                finally:
                    dash.terminate()
                    dash.wait()
                results[label] = {
                    "entropy_chart_s": statistics.median(to_entropy),
                    "all_charts_s": statistics.median(to_all),
                }
        finally:
            server.terminate()
            server.wait()
    print(f"run view, {args.steps} steps, median of {args.repeat} page loads:")
    for label, r in results.items():
        entropy_s, all_s = r["entropy_chart_s"], r["all_charts_s"]
        print(f"  {label:<22} entropy chart {entropy_s:.2f}s   all charts {all_s:.2f}s")
    base, full = results["downsampled (default)"], results["all points"]
    ratio = full["all_charts_s"] / base["all_charts_s"]
    print(f"ratio all points / downsampled (all charts): {ratio:.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
