"""docker-compose.yml's structure and the images (no Docker engine runs here to start them)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires
from typing import Any

from tests.deploy.tools import ROOT, load_yaml

SERVICES = {"redis", "monitor", "dashboard", "prometheus", "alertmanager", "grafana"}
# Every ${VAR...} in the file must be a required variable with a message.
REQUIRED_VAR = re.compile(r"^\$\{([A-Z_]+):\?[^}]+\}$")


def services() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = load_yaml(ROOT / "docker-compose.yml")["services"]
    return data


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    s = services()
    assert set(s) == SERVICES
    for name, service in s.items():
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and len(check) > 1, name
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in s and cond == {"condition": "service_healthy"}, (name, dep)
    order = {"prometheus": {"monitor", "alertmanager"}, "grafana": {"prometheus", "alertmanager"}}
    for name, deps in order.items():
        assert set(s[name]["depends_on"]) == deps


def test_healthchecks_probe_the_service_own_port() -> None:
    expected = {
        "monitor": "127.0.0.1:8000/readyz",
        "dashboard": "127.0.0.1:8501/_stcore/health",
        "prometheus": "127.0.0.1:9090/-/ready",
        "alertmanager": "127.0.0.1:9093/-/ready",
        "grafana": "127.0.0.1:3000/api/health",
    }
    s = services()
    for name, target in expected.items():
        assert any(target in part for part in s[name]["healthcheck"]["test"]), name
    assert s["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_referenced_files_exist_and_volumes_are_declared() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                used.add(source)
            assert target.startswith("/"), volume
    assert used == declared


def test_config_files_are_mounted_where_the_commands_read_them() -> None:
    s = services()
    assert "--config.file=/etc/prometheus/prometheus.yml" in s["prometheus"]["command"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in s["prometheus"]["volumes"]
    assert (ROOT / "deploy/prometheus/prometheus.yml").is_file()
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in s["alertmanager"]["command"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in s["alertmanager"]["volumes"]
    grafana = s["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana
    provider = load_yaml(ROOT / "deploy/grafana/provisioning/dashboards/entmon.yml")
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    home = s["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / home.rsplit("/", 1)[1]).is_file()


def test_secrets_are_required_and_nothing_else_is_interpolated() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    references = re.findall(r"\$\{[^}]*\}", text)
    assert references
    for ref in references:
        assert REQUIRED_VAR.match(ref), f"{ref}: use ${{VAR:?message}}"
    required = {m.group(1) for r in references if (m := REQUIRED_VAR.match(r))}
    assert required == {
        "ENTMON_ADMIN_TOKENS",
        "ENTMON_INGEST_TOKENS",
        "ENTMON_DASHBOARD_TOKEN",
        "GRAFANA_ADMIN_PASSWORD",
    }


def test_redis_is_append_only_on_a_volume() -> None:
    redis = services()["redis"]
    assert redis["command"][1:3] == ["--appendonly", "yes"]
    assert "redis-data:/data" in redis["volumes"]


def test_monitor_scales_and_unauthenticated_ui_stays_on_loopback() -> None:
    s = services()
    monitor = s["monitor"]
    assert "container_name" not in monitor  # --scale needs generated names
    assert all(":" not in str(p) for p in monitor["ports"])  # an ephemeral host port each
    assert s["monitor"]["environment"]["ENTMON_REDIS_URL"] == "redis://redis:6379/0"
    for name in ("prometheus", "alertmanager"):
        assert all(str(p).startswith("127.0.0.1:") for p in s[name]["ports"]), name


def test_images_run_as_non_root_with_a_healthcheck() -> None:
    for dockerfile in (ROOT / "deploy/docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        assert "\nUSER entmon" in text and "HEALTHCHECK" in text, dockerfile.name
        assert text.index("useradd") < text.index("\nUSER entmon")


def test_server_image_has_no_torch() -> None:
    """The image installs the `server` extra, which must not pull torch, and the service must run
    without torch importable (the client package ships in the same wheel)."""
    server = (ROOT / "deploy/docker/server.Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[server]"' in server
    server_deps = [r for r in requires("entmon") or [] if "extra" not in r or '"server"' in r]
    assert server_deps and not [d for d in server_deps if d.lower().startswith("torch")]
    blocked = (
        "import sys; sys.modules['torch'] = None; "  # any `import torch` now raises ImportError
        "import monitor.main, entmon.cli; monitor.main.create_app(); print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
