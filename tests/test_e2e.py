"""The thin path through every part, with real processes: client -> `entmon serve` (embedded
Redis) -> query API -> /metrics -> dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from streamlit.testing.v1 import AppTest

from client import Monitor
from tests.conftest import ServerProcess

DASHBOARD = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(sample name, run label) -> value of every per-run sample of /metrics."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, s.labels["run"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "run" in s.labels
    }


def wait_for_steps(url: str, run: str, n: int, timeout_s: float = 20.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/runs/{run}/steps")
        if r.status_code == 200 and len(steps := r.json()["steps"]) >= n:
            return steps  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"{n} steps of {run} not stored after {timeout_s}s")


def test_client_to_dashboard_through_embedded_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}).start()  # no ENTMON_REDIS_URL
    try:
        children = psutil.Process(server.process.pid).children()  # type: ignore[union-attr]
        assert [c.name() for c in children] == ["redis-server"]

        with Monitor(run="e2e", url=server.url) as mon:
            for step in range(20):
                mon.log(step, entropy=2.0 - 0.05 * step, reward=0.1 + 0.01 * step, lr=1e-6)

        steps = wait_for_steps(server.url, "e2e", 20)
        assert [s["step"] for s in steps] == list(range(20))
        assert steps[-1]["stats"] == {"entropy": pytest.approx(1.05), "reward": pytest.approx(0.29)}
        assert steps[-1]["user"] == {"lr": pytest.approx(1e-6)}

        metrics = scrape(server.url)
        assert metrics[("entmon_policy_entropy", "e2e")] == pytest.approx(1.05)
        assert metrics[("entmon_reports_total", "e2e")] == 20

        monkeypatch.setenv("ENTMON_URL", server.url)
        app = AppTest.from_file(DASHBOARD, default_timeout=30)
        app.query_params["run"] = "e2e"
        app.run()
        assert not app.exception
        assert next(s for s in app.selectbox if s.label == "Run").value == "e2e"
        chart = next(c for c in app.get("plotly_chart") if "entropy-chart" in c.proto.id)
        entropy, reward = json.loads(chart.proto.spec)["data"]
        assert (entropy["name"], reward["name"]) == ("entropy", "reward")
        assert entropy["x"] == list(range(20))
        assert entropy["y"][-1] == pytest.approx(1.05)
        assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0  # append-only is on
    finally:
        code = server.stop()
    assert code == 0
    for child in children:  # the embedded Redis stopped with the service
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_data_survives_a_restart_of_the_embedded_stack(tmp_path: Path) -> None:
    server = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        with Monitor(run="persist", url=server.url) as mon:
            for step in range(5):
                mon.log(step, entropy=1.0)
        wait_for_steps(server.url, "persist", 5)
    finally:
        server.stop()
    again = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}).start()
    try:
        assert len(wait_for_steps(again.url, "persist", 5)) == 5
    finally:
        again.stop()
