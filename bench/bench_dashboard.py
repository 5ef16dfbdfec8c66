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

ROOT = str(Path(__file__).resolve().parent.parent)  # the pages' PYTHONPATH: this checkout
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

# --breakdown adds a third page between the two: the floor drawing the Run page's own entropy
# figure (charts.entropy_reward of the same steps), to tell the figure's cost from the page's.
OUR_CHART_APP = """
import streamlit as st
from dashboard import api, charts
from dashboard.views.run import CHARTED

http = api.make_client(api.api_url())
steps = api.get_steps(http, st.query_params["run"], stats=CHARTED)
st.plotly_chart(charts.entropy_reward(steps, changes=charts.version_changes(steps)))
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


# --breakdown: the browser's own timestamps (ms from navigation start) of what a load goes
# through, recorded by a MutationObserver installed before the page's scripts run.
PROBE = """(() => {
  const marks = {}; window.__benchMarks = marks;
  const mark = (k) => { if (!(k in marks)) marks[k] = performance.now(); };
  const drawn = (n) => [...document.querySelectorAll('.js-plotly-plot')].some(
    (e) => e.data && e.data[0] && e.data[0].x && e.data[0].x.length && e.data[0].x.at(-1) >= n);
  new MutationObserver(() => {
    if (document.querySelector('[data-testid="stElementContainer"]')) mark('first element');
    if (document.querySelector('[data-testid="stPlotlyChart"]')) mark('chart element');
    if (drawn(__LAST_STEP__)) mark('chart drawn');
    const plots = [...document.querySelectorAll('.js-plotly-plot')].filter((e) => e.data).length;
    for (let i = 1; i <= plots; i++) mark(`plots drawn ${i}`);
    const mounted = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
    for (let i = 1; i <= mounted; i++) mark(`charts mounted ${i}`);
  }).observe(document, {childList: true, subtree: true, attributes: false});
})();"""

# The breakdown's rows, in the order a load passes them (ms from navigation start).
BREAKDOWN = (
    ("html+js parsed", "DOMContentLoaded: the page and Streamlit's main bundle"),
    ("ws first frame sent", "the websocket is open and the browser asked for a script run"),
    ("ws new_session", "the server started the session"),
    ("ws first delta", "the script's first element arrived"),
    ("first element", "... and is in the DOM"),
    ("ws chart delta", "the entropy chart's element arrived (the script got that far)"),
    ("plotly chunk start", "PlotlyChart.*.js (4.7 MB) requested"),
    ("plotly chunk end", "... and fetched"),
    ("chart element", "the chart component mounted (the chunk evaluated)"),
    ("chart drawn", "Plotly drew the run's last step"),
    *((f"charts mounted {i}", "") for i in range(1, 7)),
    *((f"plots drawn {i}", "") for i in range(1, 7)),
    ("ws script finished", "the server finished the first script run"),
)


def _frame_kind(payload: bytes | str) -> str:
    """What a ForwardMsg is: its type, and for an element the element's."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    if isinstance(payload, str):
        return "text"
    msg = ForwardMsg()
    msg.ParseFromString(payload)
    kind = msg.WhichOneof("type") or "?"
    if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
        return f"delta:{msg.delta.new_element.WhichOneof('type')}"
    return kind


def first_chart_s(
    browser: Browser, url: str, last_step: int, breakdown: dict[str, list[float]] | None = None
) -> float:
    """Seconds from navigation until a chart holds `last_step`; with `breakdown`, each of
    BREAKDOWN's marks of this load is appended to it (ms from navigation start)."""
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    frames: list[tuple[float, str]] = []  # (unix ms, kind) as Playwright saw the websocket
    if breakdown is not None:
        page.add_init_script(PROBE.replace("__LAST_STEP__", str(last_step)))

        def on_websocket(ws: Any) -> None:
            ws.on("framesent", lambda _: frames.append((time.time() * 1000, "sent")))
            ws.on(
                "framereceived",
                lambda payload: frames.append((time.time() * 1000, _frame_kind(payload))),
            )

        page.on("websocket", on_websocket)
    try:
        started = time.perf_counter()
        page.goto(url)
        page.wait_for_function(CHART_AT, arg=last_step, timeout=120_000)
        seconds = time.perf_counter() - started
        if breakdown is not None:
            page.wait_for_function("() => 'chart drawn' in window.__benchMarks", timeout=30_000)
            for name, value in _marks(page, frames).items():
                breakdown.setdefault(name, []).append(value)
        return seconds
    finally:
        page.close()


def _marks(page: Any, frames: list[tuple[float, str]]) -> dict[str, float]:
    origin = page.evaluate("performance.timeOrigin")
    marks: dict[str, float] = dict(page.evaluate("window.__benchMarks"))
    marks["html+js parsed"] = page.evaluate(
        "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
    )
    chunk = page.evaluate(
        "performance.getEntriesByType('resource').filter((e) => e.name.includes('/PlotlyChart.'))"
        ".map((e) => [e.startTime, e.responseEnd])"
    )
    if chunk:
        marks["plotly chunk start"], marks["plotly chunk end"] = chunk[0]
    first = {
        "ws first frame sent": "sent", "ws new_session": "new_session",
        "ws first delta": "delta:", "ws chart delta": "delta:plotly_chart",
        "ws script finished": "script_finished",
    }  # fmt: skip
    for name, prefix in first.items():
        at = next((t for t, kind in frames if kind.startswith(prefix)), None)
        if at is not None:
            marks[name] = at - origin
    return marks


def measure(
    browser: Browser,
    pages: dict[str, str],
    sizes: Sequence[int],
    repeat: int,
    breakdowns: dict[str, dict[str, dict[str, list[float]]]] | None = None,
) -> dict[str, dict[str, float]]:
    """Median seconds to the first chart, per run size and page; the pages alternate. With
    `breakdowns`, each load's marks are collected there by run size and page."""
    out: dict[str, dict[str, float]] = {}
    for steps in sizes:
        times: dict[str, list[float]] = {name: [] for name in pages}
        for i in range(repeat):
            order = list(pages) if i % 2 == 0 else list(reversed(pages))
            for name in order:
                url = f"{pages[name]}?run=r{steps}"
                marks = None
                if breakdowns is not None:
                    marks = breakdowns.setdefault(str(steps), {}).setdefault(name, {})
                times[name].append(first_chart_s(browser, url, steps - 1, marks))
        out[str(steps)] = {name: statistics.median(t) for name, t in times.items()}
    return out


def print_breakdown(label: str, breakdowns: dict[str, dict[str, dict[str, list[float]]]]) -> None:
    """Median ms from navigation start of each mark, the floor and the Run page side by side."""
    for steps, pages in breakdowns.items():
        names = list(pages)
        print(f"  {label}, {int(steps)} steps: median ms from navigation start")
        print(f"    {'mark':<22}" + "".join(f"{n:>10}" for n in names) + "  what")
        for mark, what in BREAKDOWN:
            cells = []
            for name in names:
                values = pages[name].get(mark, [])
                cells.append(f"{statistics.median(values):>10.0f}" if values else f"{'-':>10}")
            print(f"    {mark:<22}" + "".join(cells) + f"  {what}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--breakdown", action="store_true",
        help="also print where each load's time goes (browser and websocket timestamps)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    breakdowns: dict[str, Any] = {"idle": {}, "live": {}} if args.breakdown else {}
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
        env = clean | {"ENTMON_URL": api}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        dash_port, floor_port, ours_port = free_port(), free_port(), free_port()

        def command(source: str, port: int) -> list[str]:
            """A page under the same Streamlit options as the dashboard."""
            app = Path(tmp) / f"page{port}.py"
            app.write_text(source)
            return [str(app) if a.endswith("app.py") else a for a in dashboard_command(port)]

        try:
            wait_http(f"{api}/readyz")
            started = time.perf_counter()
            for steps in args.steps:
                seed(api, f"r{steps}", steps)
            print(f"seeded {sum(args.steps)} steps in {time.perf_counter() - started:.1f}s")
            with (
                streamlit(dashboard_command(dash_port), env, dash_port) as dash,
                streamlit(command(FLOOR_APP, floor_port), env, floor_port) as floor,
                streamlit(command(OUR_CHART_APP, ours_port), env, ours_port) as ours,
                sync_playwright() as p,
            ):
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pages = {"floor": f"{floor}/", "run page": f"{dash}/run"}
                if args.breakdown:
                    pages = {"floor": pages["floor"], "our chart": f"{ours}/", **pages}
                results["idle"] = measure(
                    browser, pages, args.steps, args.repeat, breakdowns.get("idle")
                )
                with reporting_every_second(api, {f"r{s}": s for s in args.steps}):
                    results["live"] = measure(
                        browser, pages, args.steps, args.repeat, breakdowns.get("live")
                    )
                browser.close()
        finally:
            server.terminate()
            server.wait()
    print(f"first chart, median of {args.repeat} page loads (floor: one st.plotly_chart of the")
    print(f"same {MAX_POINTS} downsampled points from the same API; goal: ratio <= {GOAL})")
    for condition, label in (("idle", "finished run"), ("live", "run reporting every second")):
        for steps, row in results[condition].items():
            row["ratio"] = row["run page"] / row["floor"]
            ours = f"our chart alone {row['our chart']:.2f}s  " if "our chart" in row else ""
            print(
                f"  {label:<27} {int(steps):>6} steps: floor {row['floor']:.2f}s  {ours}"
                f"run page {row['run page']:.2f}s  ratio {row['ratio']:.2f}"
            )
    for condition, label in (("idle", "finished run"), ("live", "run reporting every second")):
        if breakdowns.get(condition):
            print_breakdown(label, breakdowns[condition])
    if breakdowns:
        results["breakdown"] = breakdowns
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
