"""A driver's report (rank DRIVER_RANK: a process that trains nothing, verl's trainer) in the
merged step, the run summary and /metrics."""

from __future__ import annotations

import math
from typing import Any

from fastapi.testclient import TestClient

from entmon.wire.ids import DRIVER_RANK
from monitor.store import DRIVER_LAG_STEPS
from tests.monitor.test_metrics import samples


def rank(step: int, r: int, **stats: Any) -> dict[str, Any]:
    return {"step": step, "rank": r, "world_size": 2, "control_version": 3, "stats": stats}


def driver(step: int, **stats: Any) -> dict[str, Any]:
    return {"step": step, "rank": DRIVER_RANK, "stats": stats}


def post(api: TestClient, reports: list[dict[str, Any]]) -> None:
    r = api.post("/v1/runs/r1/reports", json=reports)
    assert r.status_code == 200 and r.json()["accepted"] == len(reports), r.text


def test_the_drivers_values_are_the_steps_and_it_is_counted_in_no_rank(api: TestClient) -> None:
    post(
        api,
        [
            rank(1, 0, tokens=100, cov_mean=0.1, entropy=1.0, client_drops=1),
            rank(1, 1, tokens=300, cov_mean=0.5, entropy=2.0),
            driver(1, entropy=0.7, reward=0.25, response_length=180.0, client_drops=2)
            | {"control_version": 0},  # a driver's version is not a rank's: ignored
        ],
    )
    (point,) = api.get("/v1/runs/r1/steps").json()["steps"]
    assert (point["ranks"], point["driver"], point["control_version"]) == (2, True, 3)
    stats = point["stats"]
    assert stats["tokens"] == 400  # the driver's report is no share of the tokens
    assert math.isclose(stats["cov_mean"], 0.4)  # the ranks' token-weighted mean
    assert stats["entropy"] == 0.7  # the whole batch's, not a rank-weighted mix
    assert (stats["reward"], stats["response_length"]) == (0.25, 180.0)
    assert stats["client_drops"] == 3  # counts add


def test_a_diverged_rank_is_not_hidden_by_the_drivers_value(api: TestClient) -> None:
    post(api, [rank(1, 0, tokens=10, entropy="NaN"), driver(1, entropy=0.7, reward="NaN")])
    (point,) = api.get("/v1/runs/r1/steps").json()["steps"]
    assert point["stats"]["entropy"] == "NaN"
    assert point["stats"]["reward"] == "NaN"


def test_a_step_only_the_driver_reported_has_no_rank(api: TestClient) -> None:
    post(api, [driver(1, entropy=0.7, reward=0.25)])  # verl's critic warmup: no actor update
    (point,) = api.get("/v1/runs/r1/steps").json()["steps"]
    assert (point["ranks"], point["driver"], point["control_version"]) == (0, True, None)
    assert point["stats"] == {"entropy": 0.7, "reward": 0.25}
    assert api.get("/v1/runs/r1").json()["ranks"] == []


def test_the_run_summary_lists_the_training_ranks_only(api: TestClient) -> None:
    post(api, [rank(s, r, tokens=10) for s in (1, 2) for r in (0, 1)])
    post(api, [driver(s, entropy=1.0) for s in (1, 2)])
    summary = api.get("/v1/runs/r1").json()
    assert [(r["rank"], r["step"]) for r in summary["ranks"]] == [(0, 2), (1, 2)]
    assert summary["reports"] == 6


def test_the_latest_step_is_the_newest_the_driver_reported(api: TestClient) -> None:
    """verl's driver logs a step after its actor update: until then the newest step has no
    entropy, and the latest-step gauges would blink out at every step."""
    for s in (1, 2, 3):
        post(api, [rank(s, 0, tokens=10), rank(s, 1, tokens=10), driver(s, entropy=2.0 - s / 10)])
    post(api, [rank(4, 0, tokens=10), rank(4, 1, tokens=10)])  # step 4's driver: not yet
    summary = api.get("/v1/runs/r1").json()
    assert (summary["last_step"], summary["latest"]["step"]) == (4, 3)
    assert summary["latest"]["stats"]["entropy"] == 1.7
    assert samples(api)[("entmon_policy_entropy", (("run", "r1"),))] == 1.7
    post(api, [driver(4, entropy=1.6)])
    assert api.get("/v1/runs/r1").json()["latest"]["step"] == 4
    assert samples(api)[("entmon_policy_entropy", (("run", "r1"),))] == 1.6


def test_a_driver_gone_quiet_no_longer_holds_the_latest_step(api: TestClient) -> None:
    post(api, [rank(1, 0, tokens=10), driver(1, entropy=1.0)])
    behind = 1 + DRIVER_LAG_STEPS
    post(api, [rank(s, 0, tokens=10) for s in range(2, behind + 1)])
    assert api.get("/v1/runs/r1").json()["latest"]["step"] == 1  # DRIVER_LAG_STEPS behind
    post(api, [rank(behind + 1, 0, tokens=10)])
    assert api.get("/v1/runs/r1").json()["latest"]["step"] == behind + 1


def test_no_rank_below_the_drivers_is_accepted(api: TestClient) -> None:
    r = api.post("/v1/runs/r1/reports", json={"step": 1, "rank": DRIVER_RANK - 1})
    assert r.status_code == 422
