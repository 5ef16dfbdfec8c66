from __future__ import annotations

import json
import math

from fastapi.testclient import TestClient

from entmon.wire.layouts import ENTROPY_LAYOUT, bucket_count
from monitor.main import create_app
from monitor.settings import Settings
from tests.conftest import LOCAL


def report(step: int, rank: int = 0, **stats: object) -> dict[str, object]:
    return {"step": step, "rank": rank, "stats": {"tokens": 100, **stats}}


def test_ingest_then_query_round_trip(api: TestClient) -> None:
    r = api.post("/v1/runs/r1/reports", json=[report(0, entropy=1.5), report(1, entropy=1.2)])
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    assert body["control"]["version"] == 0
    steps = api.get("/v1/runs/r1/steps").json()["steps"]
    assert [(s["step"], s["stats"]["entropy"]) for s in steps] == [(0, 1.5), (1, 1.2)]


def test_single_report_body_is_accepted(api: TestClient) -> None:
    assert api.post("/v1/runs/r1/reports", json=report(3, entropy=1.0)).json()["accepted"] == 1


def test_resending_a_step_is_idempotent(api: TestClient) -> None:
    api.post("/v1/runs/r1/reports", json=report(0, entropy=1.5))
    again = api.post("/v1/runs/r1/reports", json=report(0, entropy=9.9)).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    steps = api.get("/v1/runs/r1/steps").json()["steps"]
    assert [s["stats"]["entropy"] for s in steps] == [1.5]  # the first write stands
    assert api.get("/v1/runs/r1").json()["reports"] == 1


def test_ranks_of_a_step_merge_weighted_by_tokens(api: TestClient) -> None:
    api.post(
        "/v1/runs/r1/reports",
        json=[
            {"step": 0, "rank": 0, "stats": {"entropy": 1.0, "tokens": 100, "detached": 1}},
            {"step": 0, "rank": 1, "stats": {"entropy": 2.0, "tokens": 300, "detached": 2}},
        ],
    )
    (point,) = api.get("/v1/runs/r1/steps").json()["steps"]
    assert point["ranks"] == 2
    assert point["stats"]["tokens"] == 400
    assert point["stats"]["detached"] == 3
    assert math.isclose(point["stats"]["entropy"], 1.75)


def test_nonfinite_statistics_are_stored_and_flagged(api: TestClient) -> None:
    body = api.post("/v1/runs/r1/reports", json=report(0, entropy="NaN", reward="Infinity")).json()
    assert body["accepted"] == 1
    assert body["nonfinite"] == ["step 0: entropy", "step 0: reward"]
    (point,) = api.get("/v1/runs/r1/steps").json()["steps"]
    assert point["stats"]["entropy"] == "NaN"
    assert point["stats"]["reward"] == "Infinity"


def test_bare_nan_literals_of_python_json_are_read_and_flagged(api: TestClient) -> None:
    # json.dumps writes NaN / Infinity as bare literals: not JSON, but what a diverged run sends
    body = json.dumps([report(0, entropy=math.nan, reward=-math.inf), report(1, entropy=0.5)])
    r = api.post("/v1/runs/r1/reports", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["nonfinite"] == ["step 0: entropy", "step 0: reward"]
    steps = api.get("/v1/runs/r1/steps").json()["steps"]
    assert [s["stats"]["entropy"] for s in steps] == ["NaN", 0.5]
    assert steps[0]["stats"]["reward"] == "-Infinity"


def test_bad_user_values_and_times_are_422_naming_the_field(api: TestClient) -> None:
    for bad, loc in [
        ({"step": 0, "user": {"lr": None}}, ["body", "user"]),
        ([report(0), {"step": 1, "user": {"lr": "fast"}}], ["body", 1, "user"]),
        ({"step": 0, "time": "NaN"}, ["body", "time"]),
        ({"rank": 0}, ["body", "step"]),
        ({"step": 0, "extra": 1}, ["body", "extra"]),
    ]:
        r = api.post("/v1/runs/r1/reports", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == loc
    assert api.get("/v1/runs/r1").status_code == 404  # nothing half-stored


def test_steps_range_and_downsampling(api: TestClient) -> None:
    api.post("/v1/runs/r1/reports", json=[report(s, entropy=float(s)) for s in range(100)])
    ranged = api.get("/v1/runs/r1/steps", params={"start": 10, "end": 19}).json()["steps"]
    assert [s["step"] for s in ranged] == list(range(10, 20))
    sampled = api.get("/v1/runs/r1/steps", params={"max_points": 10}).json()["steps"]
    assert len(sampled) <= 10
    assert sampled[0]["step"] == 0 and sampled[-1]["step"] == 99
    every = api.get("/v1/runs/r1/steps", params={"every": 25}).json()["steps"]
    assert [s["step"] for s in every] == [0, 25, 50, 75, 99]
    both = api.get("/v1/runs/r1/steps", params={"every": 5, "max_points": 50}).json()["steps"]
    assert [s["step"] for s in both][:3] == [0, 5, 10] and len(both) == 21  # every wins here


def test_invalid_run_id_is_rejected_naming_it(api: TestClient) -> None:
    r = api.post("/v1/runs/bad%20run/reports", json=report(0))
    assert r.status_code == 422
    assert "run" in r.text


def test_wrong_bucket_count_is_rejected_naming_the_field(api: TestClient) -> None:
    bad = {"step": 0, "histograms": {"entropy": {"layout": ENTROPY_LAYOUT, "counts": [1, 2]}}}
    r = api.post("/v1/runs/r1/reports", json=bad)
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "histograms", "entropy", "counts"]
    assert f"length >= {bucket_count(ENTROPY_LAYOUT)}" in error["msg"]
    assert api.get("/v1/runs/r1").status_code == 404  # nothing half-stored


def test_body_over_the_limit_is_413(api: TestClient) -> None:
    big = [report(s, entropy=1.0) for s in range(20_000)]
    assert api.post("/v1/runs/r1/reports", json=big).status_code == 413


def test_unknown_run_is_404(api: TestClient) -> None:
    assert api.get("/v1/runs/nope").status_code == 404
    assert api.get("/v1/runs/nope/steps").status_code == 404


def test_too_many_buckets_and_negative_counts_are_422(api: TestClient) -> None:
    many = {"step": 0, "histograms": {"entropy": {"layout": ENTROPY_LAYOUT, "counts": [0] * 600}}}
    r = api.post("/v1/runs/r1/reports", json=many)
    assert r.status_code == 422 and "counts" in r.text
    wrong_layout = {"step": 0, "histograms": {"entropy": {"layout": "cov-symlog-v1", "counts": []}}}
    r = api.post("/v1/runs/r1/reports", json=wrong_layout)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "histograms", "entropy", "layout"]
    negative = [0] * bucket_count(ENTROPY_LAYOUT)
    negative[3] = -1
    bad = {"step": 0, "histograms": {"entropy": {"layout": ENTROPY_LAYOUT, "counts": negative}}}
    r = api.post("/v1/runs/r1/reports", json=bad)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][-2:] == ["counts", 3]


def test_a_bad_report_in_a_batch_rejects_the_batch_and_names_it(api: TestClient) -> None:
    r = api.post("/v1/runs/r1/reports", json=[report(0), {"step": 1, "stats": {"entropyy": 1.0}}])
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", 1, "stats", "entropyy"]
    assert api.get("/v1/runs/r1").status_code == 404


def test_histograms_and_top_tokens_of_a_step_merge_over_ranks(api: TestClient) -> None:
    counts = [0] * bucket_count(ENTROPY_LAYOUT)
    counts[10] = 2
    hist = {"entropy": {"layout": ENTROPY_LAYOUT, "counts": counts}}
    token = {"cov": 3.0, "logp": -0.1, "advantage": 1.2, "token_id": 7, "text": " the"}
    api.post(
        "/v1/runs/r1/reports",
        json=[
            {"step": 0, "rank": 0, "histograms": hist, "top_tokens": [token]},
            {"step": 0, "rank": 1, "histograms": hist, "top_tokens": [token | {"cov": 9.0}]},
        ],
    )
    series = api.get("/v1/runs/r1/histograms", params={"name": "entropy"}).json()
    assert series["layout"] == ENTROPY_LAYOUT
    assert len(series["upper_bounds"]) == bucket_count(ENTROPY_LAYOUT) - 1
    assert series["steps"][0]["counts"][10] == 4
    tokens = api.get("/v1/runs/r1/top_tokens").json()["tokens"]
    assert [(t["cov"], t["rank"]) for t in tokens] == [(9.0, 1), (3.0, 0)]
    assert api.get("/v1/runs/r1/histograms", params={"name": "nope"}).status_code == 422


def test_empty_batch_answers_the_control_and_creates_no_run(api: TestClient) -> None:
    r = api.post("/v1/runs/r1/reports", json=[])
    assert r.status_code == 200 and r.json()["accepted"] == 0
    assert api.get("/v1/runs").json()["runs"] == []


def test_retention_keeps_the_last_steps(redis_url: str) -> None:
    from monitor.main import create_app
    from monitor.settings import Settings

    with TestClient(
        create_app(Settings(redis_url=redis_url, retention_steps=10)), base_url=LOCAL
    ) as client:
        client.post("/v1/runs/r1/reports", json=[report(s, entropy=1.0) for s in range(25)])
        steps = [s["step"] for s in client.get("/v1/runs/r1/steps").json()["steps"]]
        assert steps == list(range(15, 25))


def test_run_summary_lists_each_ranks_latest_step_and_control_version(api: TestClient) -> None:
    api.post(
        "/v1/runs/r1/reports",
        json=[
            {"step": 4, "rank": 0, "control_version": 2},
            {"step": 5, "rank": 0, "control_version": 3},
            {"step": 4, "rank": 1, "control_version": 2},
        ],
    )
    ranks = api.get("/v1/runs/r1").json()["ranks"]
    assert [(r["rank"], r["step"], r["control_version"]) for r in ranks] == [(0, 5, 3), (1, 4, 2)]


def test_steps_can_return_only_some_statistics(api: TestClient) -> None:
    api.post("/v1/runs/r1/reports", json=report(0, entropy=1.0, reward=0.5, cov_mean=0.1))
    (point,) = api.get("/v1/runs/r1/steps", params={"stats": "entropy,reward"}).json()["steps"]
    assert point["stats"] == {"entropy": 1.0, "reward": 0.5}
    r = api.get("/v1/runs/r1/steps", params={"stats": "entropy,rewardd"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "stats"]


def test_a_run_deleted_through_another_replica_is_listed_again_at_its_next_report(
    api: TestClient, settings: Settings
) -> None:
    with TestClient(
        create_app(settings), base_url=LOCAL
    ) as other:  # a second replica on the same Redis
        api.post("/v1/runs/r1/reports", json=report(0))
        assert other.delete("/v1/runs/r1").status_code == 204
        api.post("/v1/runs/r1/reports", json=report(1))  # within this replica's refresh window
        assert [r["run"] for r in other.get("/v1/runs").json()["runs"]] == ["r1"]
