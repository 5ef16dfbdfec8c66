"""deploy/k8s: every manifest valid against the Kubernetes schemas (kubernetes-validate bundles
them, strict: unknown fields fail), the Prometheus Operator objects against
tests/deploy/operator_schemas.py, and the references between the objects."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions, latest_version

from tests.deploy.operator_schemas import SCHEMAS
from tests.deploy.tools import DEPLOY, load_all, load_yaml

K8S = DEPLOY / "k8s"
# The oldest and the newest Kubernetes the bundled schemas know (autoscaling/v2 and policy/v1
# PodDisruptionBudget are GA in both).
VERSIONS = sorted({all_versions()[0], latest_version()})


def manifests() -> list[dict[str, Any]]:
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    return [doc for name in resources for doc in load_all(K8S / name)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def test_kustomization_lists_every_manifest() -> None:
    listed = load_yaml(K8S / "kustomization.yaml")["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)


@pytest.mark.parametrize("version", VERSIONS)
def test_core_objects_are_valid_kubernetes(version: str) -> None:
    core = [d for d in manifests() if d["kind"] not in SCHEMAS]
    assert {d["kind"] for d in core} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "ConfigMap",
        "PodDisruptionBudget",
    }
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    deployment = by_kind("Deployment")["entmon-monitor"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProb"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, latest_version(), strict=True)


def test_operator_objects_match_their_crd_schemas() -> None:
    operator = [d for d in manifests() if d["kind"] in SCHEMAS]
    assert sorted(d["kind"] for d in operator) == ["PrometheusRule", "ServiceMonitor"]
    for doc in operator:
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    bad = by_kind("ServiceMonitor")["entmon"]
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["ServiceMonitor"])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_monitor_deployment_probes_resources_and_replicas() -> None:
    monitor = by_kind("Deployment")["entmon-monitor"]
    assert monitor["spec"]["replicas"] >= 2
    (container,) = pod_spec(monitor)["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    hpa = by_kind("HorizontalPodAutoscaler")["entmon-monitor"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "entmon-monitor",
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > 2


def test_every_workload_is_non_root_with_resources_and_probes() -> None:
    workloads = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    assert set(workloads) == {"entmon-monitor", "entmon-dashboard", "entmon-redis"}
    for name, workload in workloads.items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            assert "memory" in c["resources"]["limits"], name
            assert "livenessProbe" in c and "readinessProbe" in c, name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_services_select_their_pods_and_name_existing_ports() -> None:
    workloads = [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        (target,) = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"] for c in pod_spec(target)["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, name


def test_service_monitor_scrapes_the_monitor_service_as_job_entmon() -> None:
    monitor = by_kind("ServiceMonitor")["entmon"]
    service = by_kind("Service")["entmon-monitor"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert [
        s
        for s in by_kind("Service").values()
        if selector.items() <= s["metadata"]["labels"].items()
    ] == [service]
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # The rules' MonitorDown matches up{job="entmon"}: the job is the Service's jobLabel value.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "entmon"


def test_configuration_and_secrets_wiring() -> None:
    config = by_kind("ConfigMap")["entmon-config"]["data"]
    assert config["ENTMON_REDIS_URL"] == "redis://entmon-redis:6379/0"
    assert by_kind("Service")["entmon-redis"]["spec"]["ports"][0]["port"] == 6379
    assert config["ENTMON_REDIS_CLUSTER"] in ("true", "false")
    from monitor.settings import Settings

    assert set(config) <= {f"ENTMON_{f.upper()}" for f in Settings.model_fields}
    secret_keys = {
        env["valueFrom"]["secretKeyRef"]["key"]
        for w in by_kind("Deployment").values()
        for c in pod_spec(w)["containers"]
        for env in c.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert secret_keys == {"admin-tokens", "ingest-tokens", "dashboard-token", "redis-url"}
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"--from-literal={key}=" in readme for key in secret_keys - {"redis-url"})
