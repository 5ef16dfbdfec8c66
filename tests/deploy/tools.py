"""Helpers of the deployment tests: the repository root, YAML loading, and the Debian programs
(promtool, prometheus, amtool) that `make system-deps` installs."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus/rules/entmon.rules.yml"
DASHBOARD = DEPLOY / "grafana/dashboards/entmon.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def require(program: str) -> str:
    """Path of a Debian program the test needs. Missing: the test fails under CI (CI=true), where
    .ci/run installs it, and skips with the fix elsewhere."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} not found: run `make system-deps` (Debian's prometheus packages)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def exposed_metric_names() -> set[str]:
    """Every sample name entmon's /metrics can expose: per-run families rendered from a snapshot
    with every field filled, plus this process's service metrics."""
    from prometheus_client.core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count
    from monitor.analysis import analyse
    from monitor.api_models import Control, StepPoint
    from monitor.gauges import AnalysisGauges
    from monitor.metrics import SERVICE_REGISTRY, STEP_GAUGES, RunSnapshot, render_runs
    from monitor.thermostat.record import ThermostatGauges

    # A run whose entropy decays and whose reward follows the law: every analysis gauge is set.
    points = [
        StepPoint(
            step=t,
            ranks=1,
            control_version=1,
            stats={stat: 1.0 for _, stat, _ in STEP_GAUGES}
            | {
                "entropy": 1.2 * 0.9**t,
                "reward": 1.0 - 0.3 * math.exp(1.2 * 0.9**t) + 0.01 * (-1) ** t,
            },
        )
        for t in range(20)
    ]
    snapshot = RunSnapshot(
        "r",
        latest=points[-1],
        meta={"last_report_time": "1.0"},
        control=Control(),
        start_entropy=1.0,
        histograms={
            "entropy": {"layout": ENTROPY_LAYOUT, "counts": [1] * bucket_count(ENTROPY_LAYOUT)},
            "covariance": {
                "layout": COVARIANCE_LAYOUT,
                "counts": [1] * bucket_count(COVARIANCE_LAYOUT),
            },
        },
        gauges=AnalysisGauges.of(analyse("r", points, Control()), 19, 0),
        thermostat=ThermostatGauges(
            status="running", knob="k", value=1.0, lower=0.0, upper=1.0, target=1.0, error=0.1
        ),
    )
    text = render_runs([snapshot])
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    service: list[Metric] = list(SERVICE_REGISTRY.collect())
    for family in service:
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def metric_names(promql: str) -> set[str]:
    """entmon_* metric names a PromQL expression reads."""
    return set(re.findall(r"\b(entmon_[a-z0-9_]+)\b", promql))
