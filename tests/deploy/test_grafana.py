"""deploy/grafana: the dashboard's panels and queries, the provisioning files, and the generated
files being up to date (deploy/generate.py --check). The queries themselves run against a real
Prometheus in test_prometheus_live.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from tests.deploy.tools import (
    DASHBOARD,
    DEPLOY,
    ROOT,
    alert_rules,
    exposed_metric_names,
    load_yaml,
    metric_names,
)

PROVISIONING = DEPLOY / "grafana/provisioning"
# Per-run metrics are identical on every replica: each query must aggregate them by run.
SERVICE_METRICS = re.compile(r"entmon_(http_request_duration_seconds|ingested_reports|rejected)")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_generated_files_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, "deploy/generate.py", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_dashboard_has_the_panels_users_alert_on() -> None:
    by_metric: dict[str, set[str]] = {}
    for panel, target in targets():
        for name in metric_names(target["expr"]):
            by_metric.setdefault(name, set()).add(panel["type"])
    assert "heatmap" in by_metric["entmon_token_covariance_bucket"]
    assert "heatmap" in by_metric["entmon_token_entropy_bucket"]
    for name in (
        "entmon_policy_entropy",
        "entmon_policy_entropy_relative",
        "entmon_reward",
        "entmon_predicted_reward_ceiling",
        "entmon_tokens_detached_total",
        "entmon_tokens_penalised_total",
        "entmon_control_knob",
        "entmon_control_loss_mode",
        "entmon_http_request_duration_seconds_bucket",
        "entmon_last_report_timestamp_seconds",
        "entmon_collapse_state",
        "entmon_intervention_health",
    ):
        assert name in by_metric, name
    exprs = [t["expr"] for _, t in targets()]
    assert 'sum(up{job="entmon"})' in exprs
    assert any(p["type"] == "alertlist" for p in dashboard()["panels"])


def test_every_query_reads_exposed_metrics_and_aggregates_replicas() -> None:
    exposed = exposed_metric_names()
    for panel, target in targets():
        expr = target["expr"]
        assert not metric_names(expr) - exposed, (panel["title"], expr)
        assert target["datasource"]["uid"] == "${datasource}"
        per_run = {m for m in metric_names(expr) if not SERVICE_METRICS.match(m)}
        if per_run:
            assert "max by (" in expr, f"{panel['title']}: aggregate the replicas"


def test_layout_ids_and_run_variable() -> None:
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["run"]["query"]["query"] == "label_values(entmon_last_step, run)"
    assert variables["run"]["multi"] and variables["run"]["includeAll"]
    for panel, target in targets():
        if panel.get("repeat") == "run":  # one heatmap per run: an exact match
            assert 'run="$run"' in target["expr"] and target["format"] == "heatmap"
        elif "run" in target["expr"]:
            assert 'run=~"$run"' in target["expr"], panel["title"]


def test_provisioning_refers_to_what_exists() -> None:
    sources = {
        d["uid"]: d for d in load_yaml(PROVISIONING / "datasources/entmon.yml")["datasources"]
    }
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["alertmanager"]["url"] == "http://alertmanager:9093"
    assert sources["prometheus"]["jsonData"]["alertmanagerUid"] in sources
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] in sources
    alerting = load_yaml(PROVISIONING / "alerting/entmon-alerts.yml")
    rules = [r for g in alerting["groups"] for r in g["rules"]]
    for rule in rules:
        refs = {q["refId"] for q in rule["data"]}
        assert rule["condition"] in refs
        assert {q["datasourceUid"] for q in rule["data"]} <= set(sources) | {"__expr__"}
        assert len(rule["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", rule["uid"])


def test_grafana_alert_rules_mirror_the_prometheus_rules_paused() -> None:
    """Prometheus + Alertmanager notify; Grafana's copies are provisioned paused so nothing is
    notified twice (deploy/README.md says how to switch)."""
    alerting = load_yaml(PROVISIONING / "alerting/entmon-alerts.yml")
    grafana = {r["title"]: r for g in alerting["groups"] for r in g["rules"]}
    prometheus = {r["alert"]: r for r in alert_rules()}
    assert set(grafana) == set(prometheus)
    assert len({r["uid"] for r in grafana.values()}) == len(grafana)
    for name, rule in grafana.items():
        source = prometheus[name]
        assert rule["isPaused"] is True
        assert rule["data"][0]["model"]["expr"] == source["expr"].strip()
        assert rule["for"] == source["for"] and rule["labels"] == source["labels"]
        for key, text in rule["annotations"].items():
            assert text == source["annotations"][key].replace("$value", "$values.A.Value")
            assert not re.search(r"\$value\b", text), (name, key)
