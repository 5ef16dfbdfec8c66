from __future__ import annotations

from fastapi.testclient import TestClient

from entmon.wire.knobs import DEFAULTS


def test_get_control_defaults_with_etag(api: TestClient) -> None:
    r = api.get("/v1/runs/r1/control")
    assert r.status_code == 200
    assert r.headers["etag"] == '"0"'
    assert r.json() == {**DEFAULTS, "version": 0}


def test_put_changes_knobs_bumps_version_and_audits(api: TestClient) -> None:
    r = api.put(
        "/v1/runs/r1/control",
        json={"loss_mode": "kl_cov", "kl_cov_ratio": 0.01, "reason": "entropy collapsing"},
        headers={"If-Match": '"0"'},
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"1"'
    assert r.json()["loss_mode"] == "kl_cov" and r.json()["version"] == 1
    assert r.json()["clip_cov_lb"] == DEFAULTS["clip_cov_lb"]  # untouched knobs keep their value
    (entry,) = api.get("/v1/runs/r1/audit").json()["entries"]
    assert entry["version"] == 1 and entry["who"] == "anonymous"
    assert entry["reason"] == "entropy collapsing"
    assert entry["old"]["loss_mode"] == "vanilla" and entry["new"]["loss_mode"] == "kl_cov"
    # the next ingest response carries the new control
    ingest = api.post("/v1/runs/r1/reports", json={"step": 0}).json()
    assert ingest["control"]["version"] == 1


def test_put_without_if_match_is_428(api: TestClient) -> None:
    r = api.put("/v1/runs/r1/control", json={"loss_mode": "kl_cov"})
    assert r.status_code == 428
    assert api.get("/v1/runs/r1/control").json()["version"] == 0


def test_stale_version_is_412_showing_who_changed_what(api: TestClient) -> None:
    api.put(
        "/v1/runs/r1/control",
        json={"kl_cov_ratio": 0.1, "reason": "first"},
        headers={"If-Match": "0"},
    )
    r = api.put("/v1/runs/r1/control", json={"kl_cov_ratio": 0.2}, headers={"If-Match": '"0"'})
    assert r.status_code == 412
    body = r.json()
    assert body["current"]["version"] == 1 and body["current"]["kl_cov_ratio"] == 0.1
    assert body["last_change"]["reason"] == "first"
    assert r.headers["etag"] == '"1"'


def test_invalid_knobs_are_422_naming_each_field(api: TestClient) -> None:
    r = api.put(
        "/v1/runs/r1/control",
        json={"clip_cov_ratio": 1.5, "clip_cov_lb": 5, "clip_cov_ub": 1, "ppo_kl_coef": -1},
        headers={"If-Match": "0"},
    )
    assert r.status_code == 422
    fields = {e["loc"][-1] for e in r.json()["detail"]}
    assert fields == {"clip_cov_ratio", "clip_cov_lb", "ppo_kl_coef"}
    assert api.get("/v1/runs/r1/control").json()["version"] == 0  # nothing applied


def test_unknown_loss_mode_and_bad_if_match_are_422(api: TestClient) -> None:
    r = api.put(
        "/v1/runs/r1/control", json={"loss_mode": "entropy_bonus"}, headers={"If-Match": "0"}
    )
    assert r.status_code == 422 and "loss_mode" in r.text
    r = api.put("/v1/runs/r1/control", json={}, headers={"If-Match": "latest"})
    assert r.status_code == 422 and "If-Match" in r.text


def test_delete_run_removes_history_and_control(api: TestClient) -> None:
    api.post("/v1/runs/r1/reports", json={"step": 0, "stats": {"entropy": 1.0}})
    api.put("/v1/runs/r1/control", json={"loss_mode": "clip_cov"}, headers={"If-Match": "0"})
    assert api.delete("/v1/runs/r1").status_code == 204
    assert api.get("/v1/runs/r1").status_code == 404
    assert api.get("/v1/runs/r1/control").json()["version"] == 0
    assert api.get("/v1/runs").json()["runs"] == []
    assert api.delete("/v1/runs/r1").status_code == 404
