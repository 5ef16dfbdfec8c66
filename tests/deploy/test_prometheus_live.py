"""A real Prometheus scrapes a real `entmon serve` fed by a synthetic collapsing run: the alert
rules evaluate to EntropyCollapse, and every Grafana panel's query returns data.

`for:` durations: the real rules file is loaded as it is (EntropyCollapse waits 5 minutes, so it
can only reach `pending` here), together with a test-only copy whose every `for:` is rewritten to
1s and whose alerts carry the label rules="for-1s-copy"; the copy is what reaches `firing`. Same
expressions, same labels and annotations otherwise."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitor.embedded_redis import free_port
from tests.conftest import ServerProcess
from tests.deploy.tools import (
    DASHBOARD,
    DEPLOY,
    RULES,
    load_yaml,
    require,
)
from tests.synthetic_reports import report

COPY_LABEL = "for-1s-copy"
START_TIMEOUT_S = 30.0
ALERT_TIMEOUT_S = 40.0  # a bound on the wait, not a performance assertion
RATE_INTERVAL = "15s"  # $__rate_interval at a 1 s scrape interval
COLLAPSING, STEADY = "collapsing", "steady"


def for_1s_copy(rules: dict[str, Any]) -> dict[str, Any]:
    """The rules with every for: at 1s and a label telling their alerts apart."""
    fast = copy.deepcopy(rules)
    for group in fast["groups"]:
        group["name"] += "-for-1s"
        for rule in group["rules"]:
            rule["for"] = "1s"
            rule["labels"]["rules"] = COPY_LABEL
    return fast


def prometheus_config(tmp_path: Path, target: str) -> Path:
    """deploy/prometheus/prometheus.yml with a 1 s cadence, the server as the entmon job's only
    target, no Alertmanager, and the real rules plus their for-1s copy."""
    config = load_yaml(DEPLOY / "prometheus/prometheus.yml")
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("alerting")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "entmon"]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]
    fast = tmp_path / "entmon.for-1s.rules.yml"
    fast.write_text(yaml.safe_dump(for_1s_copy(load_yaml(RULES))))
    config["rule_files"] = [str(RULES), str(fast)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, config: Path, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.parent / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    require("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"prometheus did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_first_scrape(self) -> None:
        """Prometheus applies discovered targets every 5 s: the first scrape comes late."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.api("query", query='up{job="entmon"} == 1')["result"]:
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the monitor was never scraped:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[Prometheus]:
    config = prometheus_config(tmp_path, f"127.0.0.1:{server.port}")
    prom = Prometheus(config, tmp_path / "data")
    prom.wait_for_first_scrape()
    yield prom
    prom.stop()


def alerts(prom: Prometheus) -> list[dict[str, Any]]:
    return list(prom.api("alerts")["alerts"])


def state(found: list[dict[str, Any]], name: str, run: str, *, fast: bool) -> str | None:
    for a in found:
        labels = a["labels"]
        if (labels["alertname"], labels.get("run")) == (name, run) and (
            labels.get("rules") == COPY_LABEL
        ) == fast:
            return str(a["state"])
    return None


def feed(server: ServerProcess) -> None:
    """A run that switches to KL-Cov and collapses anyway, a steady run, one invalid report."""
    base = f"{server.url}/v1/runs"
    etag = httpx.get(f"{base}/{COLLAPSING}/control").headers["etag"]
    put = httpx.put(
        f"{base}/{COLLAPSING}/control",
        json={"loss_mode": "kl_cov", "kl_cov_ratio": 0.002, "reason": "live test"},
        headers={"If-Match": etag},
    )
    assert put.status_code == 200, put.text
    thermostat = httpx.put(  # so that its panels have data too
        f"{base}/{COLLAPSING}/thermostat",
        json={"enabled": True, "settings": {"target": {"points": [[0, 1.0]]},
                                             "knob": "kl_cov_ratio"}},
        headers={"If-Match": '"0"'},
    )  # fmt: skip
    assert thermostat.status_code == 200, thermostat.text
    for step in range(24):  # the entropy halves every 4 steps: under 10% of its start at 16
        for run, half_life in ((COLLAPSING, 4.0), (STEADY, 1e9)):
            r = httpx.post(
                f"{base}/{run}/reports", json=report(step, half_life=half_life, control_version=1)
            )
            assert r.status_code == 200, r.text
        if step == 4:
            invalid = httpx.post(f"{base}/{COLLAPSING}/reports", json={"step": -1})
            assert invalid.status_code == 422
        time.sleep(0.25)  # several scrapes over the run, so rate() has samples


def test_entropy_collapse_fires_and_every_panel_has_data(
    server: ServerProcess, prometheus: Prometheus
) -> None:
    feed(server)
    deadline = time.monotonic() + ALERT_TIMEOUT_S
    while True:
        found = alerts(prometheus)
        if state(found, "EntropyCollapse", COLLAPSING, fast=True) == "firing" and state(
            found, "EntropyCollapse", COLLAPSING, fast=False
        ):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"EntropyCollapse not firing: {json.dumps(found, indent=1)}")
        time.sleep(0.5)

    # The real rule (for: 5m) is pending; the copy fired. The steady run raises nothing.
    assert state(found, "EntropyCollapse", COLLAPSING, fast=False) == "pending"
    assert state(found, "EntropyCollapse", STEADY, fast=True) is None
    active = {
        (a["labels"]["alertname"], a["labels"].get("run") or a["labels"].get("reason"))
        for a in found
        if a["labels"].get("rules") == COPY_LABEL
    }
    # A collapsed run sits at the ceiling its law predicts: the synthetic reward follows the law.
    assert active == {
        ("EntropyCollapse", COLLAPSING),
        ("RewardNearCeiling", COLLAPSING),
        ("ReportsRejected", "invalid"),
    }
    (fired,) = [
        a
        for a in found
        if a["labels"]["alertname"] == "EntropyCollapse" and a["labels"].get("rules") == COPY_LABEL
    ]
    assert fired["annotations"]["action"].count(f"/v1/runs/{COLLAPSING}/control") == 1

    runs = prometheus.api("label/run/values", **{"match[]": "entmon_last_step"})
    assert set(runs) == {COLLAPSING, STEADY}  # the dashboard's run variable

    empty = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$run", COLLAPSING)
            )
            if not prometheus.api("query", query=expr)["result"]:
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
