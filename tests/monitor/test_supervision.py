"""Issue #16.2: `entmon serve` supervises its embedded redis-server. SIGKILL it and it comes back
(from its append-only file, on the same address), the dead child is reaped, the outage shows in
/readyz and /metrics; when it cannot be brought back /healthz fails. With one worker and with
several (Redis is started once, in the parent)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess


def wait_for(check: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    """Poll until `check()` is truthy; the deadline is only a ceiling, nothing is timed."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def embedded_redis(server: ServerProcess) -> psutil.Process:
    assert server.process is not None
    family = psutil.Process(server.process.pid).children(recursive=True)
    (redis,) = [p for p in family if "redis-server" in p.name() and p.status() != "zombie"]
    return redis


def metric(url: str, name: str) -> float | None:
    try:
        r = httpx.get(f"{url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    assert r.status_code == 200, r.text  # also while Redis is down
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def post(url: str, step: int) -> int:
    r = httpx.post(f"{url}/v1/runs/r1/reports", json={"step": step}, timeout=10)
    return r.status_code


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_embedded_redis_is_restarted_reaped_and_reported(
    tmp_path: Path, workers: int
) -> None:
    args = ("--workers", str(workers)) if workers > 1 else ()
    env = {"ENTMON_DATA_DIR": str(tmp_path), "ENTMON_REDIS_TIMEOUT_S": "1"}
    server = ServerProcess(env, args=args).start()
    try:
        assert [post(server.url, s) for s in range(50)] == [200] * 50
        assert metric(server.url, "entmon_embedded_redis_up") == 1.0
        for kill in (1, 2):
            dead = embedded_redis(server)
            os.kill(dead.pid, signal.SIGKILL)
            wait_for(lambda d=dead: not psutil.pid_exists(d.pid), "the killed redis-server reaped")
            wait_for(
                lambda n=kill: metric(server.url, "entmon_embedded_redis_restarts_total") == n,
                f"restart {kill} counted",
            )
            wait_for(lambda: ready(server.url), "ready again")
            assert embedded_redis(server).pid != dead.pid
        assert metric(server.url, "entmon_embedded_redis_up") == 1.0
        assert [post(server.url, s) for s in range(50, 60)] == [200] * 10
        steps = httpx.get(f"{server.url}/v1/runs/r1/steps").json()["steps"]
        assert [s["step"] for s in steps] == list(range(60))  # the append-only file was replayed
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        assert server.stop() == 0
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"
                and str(tmp_path) in " ".join(p.cmdline())]  # fmt: skip


def test_an_embedded_redis_that_cannot_restart_fails_healthz(tmp_path: Path) -> None:
    env = {
        "ENTMON_DATA_DIR": str(tmp_path),
        "ENTMON_REDIS_TIMEOUT_S": "1",
        "ENTMON_REDIS_RESTART_ATTEMPTS": "2",
    }
    server = ServerProcess(env).start()
    try:
        assert post(server.url, 0) == 200
        aof = tmp_path / "redis" / "appendonly.aof"
        # Redis 6.2 with everysec may postpone the write behind a running fsync (up to 2 s)
        wait_for(lambda: b"{r1}:meta" in aof.read_bytes(), "the report in the append-only file")
        dead = embedded_redis(server)
        os.kill(dead.pid, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(dead.pid), "the killed redis-server reaped")
        aof.write_bytes(b"garbage\r\n" + aof.read_bytes())  # redis-server now refuses to start

        def failing() -> bool:
            return httpx.get(f"{server.url}/healthz", timeout=10).status_code == 503

        wait_for(failing, "/healthz to fail")
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["status"] == "failing" and "restarts failed" in health["reason"]
        readyz = httpx.get(f"{server.url}/readyz")
        assert readyz.status_code == 503 and "embedded redis failed" in readyz.json()["reason"]
        assert metric(server.url, "entmon_embedded_redis_up") == 0.0
        assert metric(server.url, "entmon_redis_up") == 0.0
        status = json.loads((tmp_path / "redis" / "supervisor.json").read_text())
        assert status["state"] == "failed" and status["failures"] >= 2

        # Repaired, it comes back on its own and /healthz recovers
        aof.write_bytes(aof.read_bytes().removeprefix(b"garbage\r\n"))
        wait_for(lambda: ready(server.url), "ready again after the repair")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        run = httpx.get(f"{server.url}/v1/runs/r1")
        assert run.status_code == 200, run.text
        assert run.json()["reports"] == 1
    finally:
        server.stop()
