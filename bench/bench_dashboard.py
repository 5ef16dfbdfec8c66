"""Time to the first chart of the Run page against the floor: a minimal Streamlit page.

Seeds runs of 1 000 and 10 000 steps (realistic reports with histograms and top tokens) into one
real `entmon serve`, starts the real dashboard and, beside it, a minimal Streamlit page that
reads the same entropy series from the same API (the same downsampled points the Run page
draws) and draws it with one `st.plotly_chart`. In headless Debian chromium (Playwright) it
times, from navigation, until a chart holds the run's last step: the floor and the Run page
alternate, a fresh browser page each time, median of --repeat loads. Then the same while each
run reports a new step every second (the dashboard refreshes live).

    .venv/bin/python bench/bench_dashboard.py [--steps 1000 10000] [--repeat 5]
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
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.realistic import realistic_report
from dashboard.api import MAX_POINTS
from entmon.commands import dashboard_command, entmon_command
from monitor.embedded_redis import EmbeddedRedis, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
GOAL = 1.3  # the Run page's first chart within 1.3x the floor (issue #18)

# The floor: what any Streamlit page showing this series pays (a session, one API read, one
# Plotly chart of the same points).
FLOOR_APP = f"""
import os
import httpx
import plotly.graph_objects as go
import streamlit as st

run = st.query_params["run"]
body = httpx.get(
    f"{{os.environ['ENTMON_URL']}}/v1/runs/{{run}}/steps",
    params={{"max_points": {MAX_POINTS}, "stats": "entropy"}},
).json()
points = [p for p in body["steps"] if p["stats"].get("entropy") is not None]
xs = [p["step"] for p in points]
ys = [p["stats"]["entropy"] for p in points]
st.plotly_chart(go.Figure(go.Scatter(x=xs, y=ys, name="entropy")))
"""

# A chart whose first trace reaches step N: the Run page's entropy chart (its first chart) or
# the floor's only chart.
CHART_AT = """(n) => [...document.querySelectorAll('.js-plotly-plot')].some(
    (e) => e.data && e.data[0] && e.data[0].x && e.data[0].x.length && e.data[0].x.at(-1) >= n)"""


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


def report(step: int) -> dict[str, Any]:
    r = realistic_report(step, 0, seed=step % 7)
    entropy = 0.05 + 1.5 * math.exp(-step / 2000)
    r["stats"] |= {"entropy": entropy, "reward": -0.3 * math.exp(entropy) + 1.2}
    return r


def seed(api: str, run: str, steps: int) -> None:
    for lo in range(0, steps, 64):
        batch = [report(step) for step in range(lo, min(lo + 64, steps))]
        httpx.post(f"{api}/v1/runs/{run}/reports", json=batch, timeout=60).raise_for_status()


@contextmanager
def reporting_every_second(api: str, next_step: dict[str, int]) -> Iterator[None]:
    """Each run gets a new step every second (as a slow trainer sends them) until the block ends."""
    stop = threading.Event()

    def send() -> None:
        while not stop.wait(1.0):
            for run, step in next_step.items():
                httpx.post(f"{api}/v1/runs/{run}/reports", json=[report(step)], timeout=30)
                next_step[run] = step + 1

    thread = threading.Thread(target=send, name="bench-live-run")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def streamlit(command: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def first_chart_s(browser: Browser, url: str, last_step: int) -> float:
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function(CHART_AT, arg=last_step, timeout=120_000)
        return time.perf_counter() - started
    finally:
        page.close()


def measure(
    browser: Browser, pages: dict[str, str], sizes: Sequence[int], repeat: int
) -> dict[str, dict[str, float]]:
    """Median seconds to the first chart, per run size and page; the pages alternate."""
    out: dict[str, dict[str, float]] = {}
    for steps in sizes:
        times: dict[str, list[float]] = {name: [] for name in pages}
        for i in range(repeat):
            order = list(pages) if i % 2 == 0 else list(reversed(pages))
            for name in order:
                url = f"{pages[name]}?run=r{steps}"
                times[name].append(first_chart_s(browser, url, steps - 1))
        out[str(steps)] = {name: statistics.median(t) for name, t in times.items()}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        server = subprocess.Popen(
            entmon_command("serve", "--port", str(api_port), "--log-level", "warning"),
            env=clean | {"ENTMON_REDIS_URL": redis.url},
            stderr=subprocess.DEVNULL,
        )
        floor_app = Path(tmp) / "floor.py"
        floor_app.write_text(FLOOR_APP)
        env = clean | {"ENTMON_URL": api}
        dash_port, floor_port = free_port(), free_port()
        # the floor runs under the same Streamlit options as the dashboard
        floor_command = [
            str(floor_app) if arg.endswith("app.py") else arg
            for arg in dashboard_command(floor_port)
        ]
        try:
            wait_http(f"{api}/readyz")
            started = time.perf_counter()
            for steps in args.steps:
                seed(api, f"r{steps}", steps)
            print(f"seeded {sum(args.steps)} steps in {time.perf_counter() - started:.1f}s")
            with (
                streamlit(dashboard_command(dash_port), env, dash_port) as dash,
                streamlit(floor_command, env, floor_port) as floor,
                sync_playwright() as p,
            ):
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pages = {"floor": f"{floor}/", "run page": f"{dash}/run"}
                results["idle"] = measure(browser, pages, args.steps, args.repeat)
                with reporting_every_second(api, {f"r{s}": s for s in args.steps}):
                    results["live"] = measure(browser, pages, args.steps, args.repeat)
                browser.close()
        finally:
            server.terminate()
            server.wait()
    print(f"first chart, median of {args.repeat} page loads (floor: one st.plotly_chart of the")
    print(f"same {MAX_POINTS} downsampled points from the same API; goal: ratio <= {GOAL})")
    for condition, label in (("idle", "finished run"), ("live", "run reporting every second")):
        for steps, row in results[condition].items():
            row["ratio"] = row["run page"] / row["floor"]
            print(
                f"  {label:<27} {int(steps):>6} steps: floor {row['floor']:.2f}s  "
                f"run page {row['run page']:.2f}s  ratio {row['ratio']:.2f}"
            )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
