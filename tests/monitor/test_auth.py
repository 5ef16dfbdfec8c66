from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from monitor.main import create_app
from monitor.settings import Settings

INGEST = "ingest-token-0123456789"
ADMIN = "admin-token-0123456789ab"


@pytest.fixture
def secured(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, ingest_tokens=[INGEST], admin_tokens=[ADMIN])
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REPORT = {"step": 0, "stats": {"entropy": 1.0}}


def test_missing_or_unknown_token_is_401(secured: TestClient) -> None:
    for headers in ({}, bearer("nope"), {"Authorization": "Basic abc"}):
        r = secured.post("/v1/runs/r1/reports", json=REPORT, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
    assert secured.get("/v1/runs", headers={}).status_code == 401


def test_ingest_token_writes_and_reads_but_cannot_change_control(secured: TestClient) -> None:
    assert (
        secured.post("/v1/runs/r1/reports", json=REPORT, headers=bearer(INGEST)).status_code == 200
    )
    assert secured.get("/v1/runs/r1/steps", headers=bearer(INGEST)).status_code == 200
    put = secured.put(
        "/v1/runs/r1/control",
        json={"loss_mode": "kl_cov"},
        headers=bearer(INGEST) | {"If-Match": "0"},
    )
    assert put.status_code == 403
    assert secured.delete("/v1/runs/r1", headers=bearer(INGEST)).status_code == 403


def test_admin_token_changes_control_and_is_audited_by_fingerprint(secured: TestClient) -> None:
    put = secured.put(
        "/v1/runs/r1/control",
        json={"loss_mode": "kl_cov"},
        headers=bearer(ADMIN) | {"If-Match": "0"},
    )
    assert put.status_code == 200
    (entry,) = secured.get("/v1/runs/r1/audit", headers=bearer(ADMIN)).json()["entries"]
    assert entry["who"].startswith("admin:") and ADMIN not in entry["who"]
    assert secured.delete("/v1/runs/r1", headers=bearer(ADMIN)).status_code in (204, 404)


def test_health_and_metrics_need_no_token(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    assert secured.get("/metrics").status_code == 200


def test_tokens_never_reach_the_logs(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(redis_url=redis_url, ingest_tokens=[INGEST], admin_tokens=[ADMIN])
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings)) as client:
        client.post("/v1/runs/r1/reports", json=REPORT, headers=bearer("wrong-secret-xyz"))
        client.post("/v1/runs/r1/reports", json=REPORT, headers=bearer(INGEST))
    assert not [r for r in caplog.records if "secret" in r.getMessage() or INGEST in r.getMessage()]


def test_open_access_is_announced_loudly(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), TestClient(create_app(Settings(redis_url=redis_url))):
        pass
    assert any("NO TOKENS CONFIGURED" in r.getMessage() for r in caplog.records)


def test_production_refuses_placeholder_tokens() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Settings(environment="production", admin_tokens=["changeme"])
    Settings(environment="production", admin_tokens=[ADMIN])  # a real one is fine


def test_tokens_from_the_environment_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTMON_INGEST_TOKENS", f" {INGEST} ,other-token-0123456789")
    assert Settings().ingest_tokens == [INGEST, "other-token-0123456789"]


def test_a_body_that_is_not_text_answers_422_not_500_with_tokens(secured: TestClient) -> None:
    """With tokens, any content type reaches the route: undecodable bytes quoted back in the
    422 once made the error handler itself fail."""
    r = secured.put(
        "/v1/runs/x/control",
        content=b"\xff\xfe",
        headers={**bearer(ADMIN), "If-Match": '"0"', "Content-Type": "text/plain"},
    )
    assert r.status_code == 422, r.text
