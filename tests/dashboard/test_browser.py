"""A real browser (Debian's chromium, driven by Playwright) against the real dashboard and
monitor processes: the entropy chart renders, a knob change reaches the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.realistic import realistic_report
from entmon.commands import dashboard_command
from monitor.embedded_redis import free_port
from tests.conftest import ServerProcess
from tests.monitor.thermostat_plant import Plant

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def dashboard(streamed: ServerProcess) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "ENTMON_URL": streamed.url}
    proc = subprocess.Popen(
        dashboard_command(port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/_stcore/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("dashboard did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def save(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS"):  # refresh the README's pictures
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / name)
    return path


def choose(page: Page, label: str, option: str) -> None:
    """Pick a selectbox option. Opening the box is retried: a live rerun of the page can move the
    box between Playwright's aim and its click, and then the list never opens."""
    for _ in range(5):
        page.get_by_label(label).click()
        choice = page.get_by_role("option", name=option)
        try:
            choice.wait_for(timeout=15_000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            continue
        choice.click()
        return
    raise AssertionError(f"the {label!r} list never showed {option!r}")


def test_browser_sees_the_entropy_chart_and_changes_a_knob(
    dashboard: str, streamed: ServerProcess, page: Page, tmp_path: Path
) -> None:
    page.goto(f"{dashboard}/?run=alpha")
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Entropy and reward").first).to_be_visible(timeout=30_000)
    assert save(page, tmp_path, "dashboard-run.png").stat().st_size > 10_000

    page.goto(f"{dashboard}/control?run=alpha")
    ratio = page.get_by_role("spinbutton", name="KL-Cov ratio k (fraction of tokens penalised)")
    expect(ratio).to_be_visible(timeout=30_000)
    ratio.fill("0.010000")
    ratio.press("Tab")
    page.get_by_label("Reason (kept in the audit log)").first.fill("browser test")  # knobs form
    page.get_by_role("button", name="Apply", exact=True).click()
    expect(page.get_by_text("Applied: control version 1")).to_be_visible(timeout=30_000)
    save(page, tmp_path, "dashboard-control.png")

    control = httpx.get(f"{streamed.url}/v1/runs/alpha/control").json()
    assert control["version"] == 1 and control["kl_cov_ratio"] == pytest.approx(0.01)
    audit = httpx.get(f"{streamed.url}/v1/runs/alpha/audit").json()["entries"]
    assert audit[0]["reason"] == "browser test"


def test_every_page_url_reloads_and_a_shared_run_link_opens_the_run(
    dashboard: str, page: Page
) -> None:
    """The Runs table's "open" link (/run?run=NAME), each page's own URL on reload, and the
    shared /?run=NAME: none may answer Streamlit's "Page not found"."""
    expected = {
        "/": "Runs",
        "/run?run=alpha": "Entropy and reward",
        "/control?run=alpha": "Reason (kept in the audit log)",
        "/compare": "Compare",
        "/?run=alpha": "Entropy and reward",
    }
    for path, text in expected.items():
        page.goto(f"{dashboard}{path}")
        expect(page.get_by_text(text).first).to_be_visible(timeout=30_000)
        page.reload()
        expect(page.get_by_text(text).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Page not found")).to_have_count(0)


# Counts, on every painted frame, whether the entropy chart once drawn is missing or drawn without
# a line: what a person watching the page would see as a blank chart.
WATCH_ENTROPY_CHART = """() => {
    window.__entmon = {frames: 0, blank: 0, drawn: false, last: null};
    const chart = () => [...document.querySelectorAll('.js-plotly-plot')].find(
        (e) => String(e.layout && e.layout.title && e.layout.title.text)
            .includes('Entropy and reward'));
    const look = () => {
        const w = window.__entmon, el = chart();
        const line = el && [...el.querySelectorAll('.scatterlayer path.js-line')].some(
            (p) => (p.getAttribute('d') || '').length > 10);
        const x = el && el.data && el.data[0] && el.data[0].x;
        if (line && x && x.length) { w.drawn = true; w.last = x[x.length - 1]; }
        else if (w.drawn) { w.blank += 1; }
        w.frames += 1;
        requestAnimationFrame(look);
    };
    requestAnimationFrame(look);
}"""


def test_live_refresh_never_blanks_the_entropy_chart(
    dashboard: str, streamed: ServerProcess, page: Page
) -> None:
    """A run that starts training while its page is open: every painted frame shows the entropy
    chart once it is drawn, also when the collapse state appears above it (from the third step)."""

    def report(step: int) -> None:
        reports = [realistic_report(step, rank, seed=rank) | {"world_size": 2} for rank in (0, 1)]
        for r in reports:
            r["stats"]["entropy"] = 1.5 - 0.1 * step
        httpx.post(f"{streamed.url}/v1/runs/live/reports", json=reports).raise_for_status()

    report(0)
    page.goto(f"{dashboard}/run?run=live")
    expect(page.get_by_text("Entropy and reward").first).to_be_visible(timeout=30_000)
    page.evaluate(WATCH_ENTROPY_CHART)
    page.wait_for_function("() => window.__entmon.drawn", timeout=30_000)
    for step in range(1, 7):  # six live refreshes, each with a new step
        report(step)
        page.wait_for_function(f"() => window.__entmon.last === {step}", timeout=30_000)
    expect(page.get_by_text("declining").first).to_be_visible()  # the state did appear
    watched = page.evaluate("() => window.__entmon")
    assert watched["frames"] > 0
    assert watched["blank"] == 0, f"{watched['blank']} of {watched['frames']} frames blank"


def test_the_thermostat_is_enabled_on_the_control_page_and_its_work_shows_on_the_run_page(
    dashboard: str, streamed: ServerProcess, page: Page, tmp_path: Path
) -> None:
    """A run whose entropy follows the KL-Cov ratio trains beside the browser; the person enables
    the thermostat on the Control page; the Run page then shows the target line and the control
    changes the thermostat made, apart from a person's."""
    stop = threading.Event()

    def train() -> None:
        with Plant([streamed.url], "thermo") as plant:
            while not stop.is_set() and plant.step < 5000:
                plant.run_step()
                stop.wait(0.05)  # a step every ~50 ms: the run goes on while the page is used

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        page.goto(f"{dashboard}/control?run=thermo")
        expect(page.get_by_text("Thermostat off")).to_be_visible(timeout=30_000)
        # The rollout above the form shows a table once the run has reported; wait for it, so the
        # form does not move under the clicks below.
        expect(page.get_by_text("Requested: version")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("No reports yet")).to_have_count(0, timeout=30_000)
        page.get_by_text("Enabled", exact=True).click()
        expect(page.get_by_role("switch", name="Enabled")).to_be_checked()
        choose(page, "Knob it drives", "KL-Cov ratio k (fraction of tokens penalised)")
        page.get_by_text("nats", exact=True).click()
        schedule = page.get_by_role("textbox", name="Target: a value, or step:value points")
        schedule.fill("2.0")  # above the run's 1.5 nats: the thermostat must raise the knob
        page.get_by_role("button", name="Apply thermostat").click()
        expect(page.get_by_text("Thermostat enabled")).to_be_visible(timeout=30_000)
        save(page, tmp_path, "dashboard-thermostat.png")

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # a thermostat change that a step then ran
            audit = httpx.get(f"{streamed.url}/v1/runs/thermo/audit").json()["entries"]
            written = [e["version"] for e in audit if e["who"] == "thermostat"]
            ran = httpx.get(f"{streamed.url}/v1/runs/thermo").json()["latest"]["control_version"]
            if written and ran >= min(written) + 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no thermostat change ran: {audit}")

        page.goto(f"{dashboard}/run?run=thermo")
        chart = page.locator(".js-plotly-plot").first
        expect(chart.get_by_text("thermostat target")).to_be_visible(timeout=30_000)
        expect(chart.get_by_text("thermostat change")).to_be_visible(timeout=30_000)
    finally:
        stop.set()
        trainer.join(60)
    assert not trainer.is_alive()
