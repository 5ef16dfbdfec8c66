"""Redis outages, concurrent control writers and several replicas, with real processes."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from monitor.embedded_redis import EmbeddedRedis
from tests.conftest import ServerProcess


def post(url: str, step: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/runs/r1/reports", json={"step": step, "stats": {"entropy": 1.0}})


def test_redis_restart_during_ingest_loses_no_acknowledged_report(tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis").start()  # the default fsync policy, everysec
    server = ServerProcess({"ENTMON_REDIS_URL": redis.url, "ENTMON_REDIS_TIMEOUT_S": "0.5"}).start()
    acknowledged: set[int] = set()
    try:
        for step in range(50):
            if post(server.url, step).status_code == 200:
                acknowledged.add(step)
        redis.kill()  # SIGKILL: what Redis wrote to its append-only file before replying survives
        down = post(server.url, 50)
        assert down.status_code == 503
        assert down.headers["retry-after"].isdigit()
        assert httpx.get(f"{server.url}/readyz").status_code == 503
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # the process itself is fine
        redis = EmbeddedRedis(tmp_path / "redis", port=redis.port).start()
        for step in range(50, 100):  # recovery without restarting the service
            if post(server.url, step).status_code == 200:
                acknowledged.add(step)
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        steps = httpx.get(f"{server.url}/v1/runs/r1/steps").json()["steps"]
        assert {s["step"] for s in steps} >= acknowledged
        assert len(acknowledged) >= 99  # only the request sent while Redis was down failed
    finally:
        server.stop()
        redis.stop()


def test_concurrent_control_writers_one_wins_one_gets_412(server: ServerProcess) -> None:
    barrier = threading.Barrier(8)
    codes: list[int] = []

    def writer(i: int) -> None:
        barrier.wait()
        r = httpx.put(
            f"{server.url}/v1/runs/r1/control",
            json={"kl_cov_ratio": 0.01 * (i + 1), "reason": f"writer {i}"},
            headers={"If-Match": '"0"'},
        )
        codes.append(r.status_code)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [412] * 7
    audit = httpx.get(f"{server.url}/v1/runs/r1/audit").json()["entries"]
    assert len(audit) == 1 and audit[0]["version"] == 1


def per_run_series(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if "run" in s.labels
    }


def test_two_replicas_on_one_redis_expose_identical_run_series(
    server: ServerProcess, redis_url: str
) -> None:
    other = ServerProcess({"ENTMON_REDIS_URL": redis_url}).start()
    try:
        for step in range(10):  # alternate replicas, as a load balancer would
            post(server.url if step % 2 else other.url, step)
        httpx.put(
            f"{other.url}/v1/runs/r1/control",
            json={"loss_mode": "clip_cov"},
            headers={"If-Match": "0"},
        )
        a, b = per_run_series(server.url), per_run_series(other.url)
        assert a == b
        assert a[("entmon_reports_total", (("run", "r1"),))] == 10  # not double counted
        assert a[("entmon_control_loss_mode", (("loss_mode", "clip_cov"), ("run", "r1")))] == 1
    finally:
        other.stop()
