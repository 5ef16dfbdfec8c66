"""Retake the README's dashboard pictures from a real `entmon demo` run.

Runs the demo as a user would (`entmon demo`: embedded Redis, the monitor, the dashboard and the
toy GRPO run, here at full speed and with a switch to KL-Cov halfway), waits until training is
done (the demo keeps its stack up), opens the dashboard in Debian's chromium (Playwright) and
saves docs/dashboard-run.png (the Run page) and docs/dashboard-control.png (the Control page).
Then stops the demo with Ctrl-C (SIGINT), as a person would.

    .venv/bin/python docs/screenshots.py [--steps 300] [--switch-at 150] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from playwright.sync_api import Page, ViewportSize, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from entmon.commands import entmon_command

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
# Streamlit scrolls inside its own container, so a picture is one viewport: tall enough for the
# Run page's tiles, main charts and histograms.
VIEWPORT: ViewportSize = {"width": 1600, "height": 1400}
# Every chart on the page is drawn and the entropy chart reaches the run's last step.
ALL_DRAWN = """(last) => {
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  const plots = [...document.querySelectorAll('.js-plotly-plot')].filter((e) => e.data);
  return charts.length > 0 && plots.length === charts.length && plots.some(
    (e) => e.data[0] && e.data[0].x && e.data[0].x.length && e.data[0].x.at(-1) >= last);
}"""


class DemoOutput:
    """The demo's terminal, read on a thread: wait for a line, find the dashboard's URL."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.text = ""
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            with self._changed:
                self.text += chunk.decode(errors="replace")
                self._changed.notify_all()
        with self._changed:
            self.text += "\n<exited>"
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        with self._changed:
            found = self._changed.wait_for(
                lambda: re.search(pattern, self.text) or "<exited>" in self.text, timeout_s
            )
            match = re.search(pattern, self.text)
        if not found or match is None:
            raise RuntimeError(f"the demo never printed {pattern!r}:\n{self.text[-2000:]}")
        return match


def shoot(page: Page, url: str, path: Path, ready: str, arg: object = None) -> None:
    page.goto(url)
    page.wait_for_function(ready, arg=arg, timeout=180_000)
    page.wait_for_timeout(1_500)  # fonts and the last layout pass
    page.screenshot(path=str(path))
    sys.stdout.write(f"\nsaved {path}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--switch-at", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    command = entmon_command(
        "demo", "--steps", str(args.steps), "--pace", "0", "--switch-at", str(args.switch_at)
    )
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = DemoOutput(proc)
        dashboard = out.wait_for(r"dashboard: (http://\S+?)/\?run=(\S+)", 300)
        url, run = dashboard.group(1), dashboard.group(2)
        out.wait_for(r"training done", 3_600)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            shoot(page, f"{url}/run?run={run}", args.out / "dashboard-run.png", ALL_DRAWN,
                  args.steps - 1)  # fmt: skip
            shoot(
                page, f"{url}/control?run={run}", args.out / "dashboard-control.png",
                "() => document.querySelectorAll('[data-testid=\"stNumberInput\"]').length > 0"
                " && !document.querySelector('[data-testid=\"stSkeleton\"]')",
            )  # fmt: skip
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # the demo stops its monitor and dashboard
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
