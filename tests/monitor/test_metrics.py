from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count
from tests.conftest import LOCAL


def samples(api: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_latest_step_gauges_counters_and_gauge_histograms(api: TestClient) -> None:
    entropy_counts = [0] * bucket_count(ENTROPY_LAYOUT)
    entropy_counts[40] = 3
    cov_counts = [0] * bucket_count(COVARIANCE_LAYOUT)
    cov_counts[0] = 1
    cov_counts[-1] = 2
    api.post(
        "/v1/runs/r1/reports",
        json=[
            {"step": 0, "stats": {"entropy": 2.0, "tokens": 100, "detached": 1}},
            {
                "step": 1,
                "stats": {"entropy": 1.0, "reward": 0.5, "tokens": 100, "detached": 2},
                "histograms": {
                    "entropy": {"layout": ENTROPY_LAYOUT, "counts": entropy_counts},
                    "covariance": {
                        "layout": COVARIANCE_LAYOUT,
                        "counts": cov_counts,
                        "nonfinite": 1,
                    },
                },
            },
        ],
    )
    s = samples(api)
    run = (("run", "r1"),)
    assert s[("entmon_policy_entropy", run)] == 1.0
    assert s[("entmon_policy_entropy_relative", run)] == 1.0 / 1.5  # median of first steps: 1.5
    assert s[("entmon_reward", run)] == 0.5
    assert s[("entmon_tokens_total", run)] == 200
    assert s[("entmon_tokens_detached_total", run)] == 3
    assert s[("entmon_nonfinite_statistics", run)] == 1  # the covariance histogram's NaN
    assert s[("entmon_control_version", run)] == 0
    assert s[("entmon_control_loss_mode", (("loss_mode", "vanilla"), ("run", "r1")))] == 1
    assert s[("entmon_token_entropy_bucket", (("le", "+Inf"), ("run", "r1")))] == 3
    assert s[("entmon_token_covariance_bucket", (("le", "-1000.0"), ("run", "r1")))] == 1
    assert s[("entmon_token_covariance_bucket", (("le", "+Inf"), ("run", "r1")))] == 3


def test_batch_counters_add_once_per_new_report_and_stay_exact(api: TestClient) -> None:
    big = 1 << 40  # the schema's largest count: sums of a full batch must stay exact integers
    api.post("/v1/runs/r1/reports", json={"step": 0, "stats": {"tokens": 7, "detached": 1}})
    api.post(
        "/v1/runs/r1/reports",
        json=[
            {"step": 0, "stats": {"tokens": 1000, "detached": 1000}},  # duplicate: not counted
            {"step": 1, "stats": {"tokens": big, "penalised": 3}},
            {"step": 2, "stats": {"tokens": big, "client_drops": 2}},
        ],
    )
    s = samples(api)
    run = (("run", "r1"),)
    assert s[("entmon_tokens_total", run)] == 7 + 2 * big
    assert s[("entmon_tokens_detached_total", run)] == 1
    assert s[("entmon_tokens_penalised_total", run)] == 3
    assert s[("entmon_client_dropped_reports_total", run)] == 2
    assert api.get("/v1/runs/r1").json()["reports"] == 3
    assert api.get("/v1/runs/r1").json()["last_step"] == 2


def test_stale_runs_leave_the_exposition(redis_url: str) -> None:
    from monitor.main import create_app
    from monitor.settings import Settings

    with TestClient(
        create_app(Settings(redis_url=redis_url, stale_after_s=1e-6)), base_url=LOCAL
    ) as api:
        api.post("/v1/runs/old/reports", json={"step": 0, "stats": {"entropy": 1.0}})
        assert not [k for k in samples(api) if ("run", "old") in k[1]]
        assert api.get("/v1/runs/old").status_code == 200  # still queryable


def test_service_metrics_count_accepted_duplicate_and_rejected(api: TestClient) -> None:
    before = samples(api)
    api.post("/v1/runs/r1/reports", json={"step": 0})
    api.post("/v1/runs/r1/reports", json={"step": 0})
    api.post("/v1/runs/r1/reports", json={"step": -1})
    after = samples(api)

    def delta(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("entmon_ingested_reports_total", (("outcome", "accepted"),)) == 1
    assert delta("entmon_ingested_reports_total", (("outcome", "duplicate"),)) == 1
    assert delta("entmon_rejected_reports_total", (("reason", "invalid"),)) == 1
