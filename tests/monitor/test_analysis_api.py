from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.monitor.synthetic_runs import A, B, entropy_curve, law_reward


def law_reports(steps: int, *, ranks: int = 1, seed: int = 0) -> list[dict[str, object]]:
    """A run on the law, with covariance driving the entropy drop and KL-Cov counters."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for t in range(steps):
        h = entropy_curve(t)
        stats = {
            "entropy": h,
            "reward": law_reward(h) + rng.gauss(0.0, 0.01),
            "cov_mean": (h - entropy_curve(t + 1)) / 0.8,  # Delta H = -0.8 cov
            "tokens": 20_000,
            "penalised": 40,
            "penalised_abs_log_ratio_mean": 0.0,  # on-policy
        }
        out += [{"step": t, "rank": r, "stats": stats} for r in range(ranks)]
    return out


def post(api: TestClient, run: str, reports: list[dict[str, object]]) -> None:
    for i in range(0, len(reports), 1000):
        assert api.post(f"/v1/runs/{run}/reports", json=reports[i : i + 1000]).status_code == 200


def set_loss_mode(api: TestClient, run: str, loss_mode: str) -> None:
    version = api.get(f"/v1/runs/{run}/control").headers["ETag"]
    r = api.put(
        f"/v1/runs/{run}/control", json={"loss_mode": loss_mode}, headers={"If-Match": version}
    )
    assert r.status_code == 200, r.text


def samples(body: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_analysis_and_metrics_of_a_run(api: TestClient) -> None:
    post(api, "r1", law_reports(240))
    set_loss_mode(api, "r1", "kl_cov")  # version 1; the steps report none
    body = api.get("/v1/runs/r1/analysis").json()

    assert body["run"] == "r1" and body["steps"] == 240 and not body["sampled"]
    law = body["law"]
    assert law["enough_data"] and law["steps"] == 240
    assert law["a"] == pytest.approx(A, rel=0.02) and law["b"] == pytest.approx(B, rel=0.02)
    assert law["ceiling_low"] < law["ceiling"] < law["ceiling_high"]
    record = body["track_record"]
    assert record["fit_points"] == 36 and record["predicted"] == 204
    assert record["rmse"] < 0.02
    assert body["collapse"]["state"] == "declining"  # at 0.12 of its start and still falling
    assert body["theory"]["eta"] == pytest.approx(0.8, rel=1e-6)
    flags = {f["flag"]: f for f in body["health"]["flags"]}
    assert flags["kl_cov_on_policy"]["active"]
    assert "several updates per rollout" in flags["kl_cov_on_policy"]["hint"]

    metrics = api.get("/metrics").text
    run = (("run", "r1"),)
    ceiling = samples(metrics, "entmon_predicted_reward_ceiling")[run]
    assert ceiling == pytest.approx(law["ceiling"])
    assert samples(metrics, "entmon_law_fit_r2")[run] == pytest.approx(law["r2"])
    assert law["holds"] and samples(metrics, "entmon_law_holds")[run] == 1.0
    states = samples(metrics, "entmon_collapse_state")
    assert states[(("run", "r1"), ("state", "declining"))] == 1.0
    assert sum(states.values()) == 1.0 and len(states) == 5
    health = samples(metrics, "entmon_intervention_health")
    assert health[(("flag", "kl_cov_on_policy"), ("run", "r1"))] == 1.0
    assert health[(("flag", "clip_cov_no_candidates"), ("run", "r1"))] == 0.0
    relative = samples(metrics, "entmon_policy_entropy_relative")[run]
    assert relative == pytest.approx(body["collapse"]["relative"])


def test_a_ceiling_the_run_already_passed_is_no_prediction_in_api_and_gauges(
    api: TestClient,
) -> None:
    reports = law_reports(240)
    post(api, "r1", reports)
    ceiling = api.get("/v1/runs/r1/analysis").json()["law"]["ceiling"]
    entropy = entropy_curve(239)
    late: list[dict[str, object]] = [
        {"step": 240 + i, "stats": {"entropy": entropy, "reward": ceiling + 0.1}} for i in range(30)
    ]
    post(api, "r1", late)
    law = api.get("/v1/runs/r1/analysis").json()["law"]
    assert not law["holds"] and "already reached" in law["verdict"]
    metrics = api.get("/metrics").text
    assert samples(metrics, "entmon_law_holds")[(("run", "r1"),)] == 0.0
    assert not samples(metrics, "entmon_predicted_reward_ceiling")


def test_query_parameters_change_the_analysis(api: TestClient) -> None:
    post(api, "r1", law_reports(240))
    body = api.get("/v1/runs/r1/analysis", params={"fit_steps": 50, "floor": 0.5}).json()
    assert body["track_record"]["fit_steps"] == 50 and body["track_record"]["predicted"] == 190
    assert body["collapse"]["state"] == "collapsed"  # below half of its start
    assert body["params"]["floor"] == 0.5


@pytest.mark.parametrize(
    "params",
    [{"fit_steps": 2}, {"floor": 1.5}, {"floor": 0}, {"smooth": 0}, {"max_points": 5}, {"x": 1}],
)
def test_invalid_parameters_are_rejected_naming_them(
    api: TestClient, params: dict[str, object]
) -> None:
    post(api, "r1", law_reports(10))
    r = api.get("/v1/runs/r1/analysis", params=params)
    assert r.status_code == 422
    assert next(iter(params)) in r.text


def test_unknown_run_is_404(api: TestClient) -> None:
    r = api.get("/v1/runs/nope/analysis")
    assert r.status_code == 404 and "nope" in r.text


def test_degenerate_runs_answer_not_enough_data(api: TestClient) -> None:
    post(api, "r1", [{"step": 0, "stats": {"entropy": 1.0, "reward": 0.1}}])
    body = api.get("/v1/runs/r1/analysis").json()
    for section in ("law", "track_record", "theory"):
        assert body[section]["note"].startswith("not enough data")
    assert body["collapse"]["state"] is None
    metrics = api.get("/metrics").text
    assert not samples(metrics, "entmon_predicted_reward_ceiling")
    assert not samples(metrics, "entmon_collapse_state")


def test_diverged_run_is_nonfinite_in_strict_json(api: TestClient) -> None:
    reports = law_reports(20)
    reports.append({"step": 20, "stats": {"entropy": "NaN", "reward": "NaN"}})
    post(api, "r1", reports)
    r = api.get("/v1/runs/r1/analysis")
    assert "NaN" not in r.text.replace('"NaN"', "")  # only as JSON strings
    body = r.json()
    assert body["collapse"]["state"] == "non-finite"
    assert body["collapse"]["latest_entropy"] == "NaN"
    states = samples(api.get("/metrics").text, "entmon_collapse_state")
    assert states[(("run", "r1"), ("state", "non-finite"))] == 1.0


def test_long_run_is_sampled_keeping_first_and_last_steps(api: TestClient) -> None:
    post(api, "r1", law_reports(600, ranks=2))  # 1200 index entries
    full = api.get("/v1/runs/r1/analysis", params={"max_points": 100_000}).json()
    sampled = api.get("/v1/runs/r1/analysis", params={"max_points": 50}).json()
    assert not full["sampled"] and full["steps"] == 600
    assert sampled["sampled"] and 36 + 51 <= sampled["steps"] <= 36 + 51 + 50
    # the early fit and the start need the first steps, the trend and health the last ones
    for key in ("fit_points", "a", "b"):
        assert sampled["track_record"][key] == full["track_record"][key]
    for key in ("start_entropy", "latest_entropy", "decay_rate"):
        assert sampled["collapse"][key] == pytest.approx(full["collapse"][key], rel=1e-9)
    assert sampled["law"]["a"] == pytest.approx(A, rel=0.03)
    assert sampled["health"]["flags"] == full["health"]["flags"]
    assert sampled["first_step"] == 0 and sampled["last_step"] == 599


def test_relative_gauge_uses_the_same_start_as_the_analysis(api: TestClient) -> None:
    reports = [
        {"step": t, "stats": {"entropy": e}}
        for t, e in enumerate(["NaN", 2.0, 1.0, 3.0, 5.0, 4.0, 0.5, 0.5])
    ]
    post(api, "r1", reports)
    body = api.get("/v1/runs/r1/analysis").json()
    assert body["collapse"]["start_entropy"] == 3.0  # median of 2, 1, 3, 5, 4: NaN skipped
    relative = samples(api.get("/metrics").text, "entmon_policy_entropy_relative")
    assert relative[(("run", "r1"),)] == pytest.approx(0.5 / 3.0)
