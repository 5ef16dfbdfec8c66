"""docker-compose.yml's structure (no Docker engine runs here to start it)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    assert set(services) == {"redis", "monitor", "dashboard"}
    for name, service in services.items():
        assert "healthcheck" in service, name
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services and cond == {"condition": "service_healthy"}, name


def test_referenced_dockerfiles_exist_and_secrets_are_required() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    for service in services.values():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    env = services["monitor"]["environment"]
    assert env["ENTMON_ADMIN_TOKENS"].startswith("${ENTMON_ADMIN_TOKENS:?")
    assert "--appendonly" in services["redis"]["command"]


def test_server_image_installs_no_torch_and_runs_as_non_root() -> None:
    server = (ROOT / "deploy/docker/server.Dockerfile").read_text()
    assert '".[server]"' in server and "torch" not in server.replace("no torch", "")
    for dockerfile in (ROOT / "deploy/docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        assert "\nUSER entmon" in text and "HEALTHCHECK" in text
