"""Issue #16 chaos: two ranks stream 1,000 steps to a real `entmon serve` (embedded Redis) while
its redis-server is SIGKILLed twice and the service itself once (restarted on the same port and
data directory, as a process supervisor would). Afterwards every logged step of both ranks is
stored and the service is ready again, with nobody stepping in.

Paced by states, not time: each phase logs its steps with one request to /healthz a step (the
step's "training work", cheap with Redis up or down), and the next fault waits for the service to
be ready again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from client import Monitor, ReporterConfig
from tests.conftest import ServerProcess

STEPS = 1000
RUN = "chaos"
# Retries no further apart than this: the test waits for the spool to drain after each fault.
CONFIG = ReporterConfig(retry_base_s=0.05, retry_max_s=0.5, request_timeout_s=2.0)


def wait_for(check: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    """Poll until `check()` is truthy; the deadline is only a ceiling, nothing is timed."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ready(url: str) -> bool:
    try:
        return HTTP.get(f"{url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


HTTP = httpx.Client(timeout=10)  # one client for the module: creating one costs ~0.1 s (TLS)


def alive(url: str) -> bool:
    try:
        return HTTP.get(f"{url}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def stored(url: str) -> dict[int, int]:
    """step -> ranks that reported it, as the query API has them."""
    try:
        r = HTTP.get(f"{url}/v1/runs/{RUN}/steps", params={"stats": "entropy"})
    except httpx.HTTPError:
        return {}
    return {s["step"]: s["ranks"] for s in r.json()["steps"]} if r.status_code == 200 else {}


def all_stored(url: str, upto: int) -> bool:
    steps = stored(url)
    return all(steps.get(s) == 2 for s in range(upto))


def restarts(url: str) -> float | None:
    for family in text_string_to_metric_families(HTTP.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "entmon_embedded_redis_restarts_total":
                return sample.value
    return None


def embedded_redis(server: ServerProcess) -> psutil.Process:
    assert server.process is not None
    family = psutil.Process(server.process.pid).children(recursive=True)
    (redis,) = [p for p in family if "redis-server" in p.name() and p.status() != "zombie"]
    return redis


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # an orphan's zombie holds no lock
    except psutil.NoSuchProcess:
        return True


def test_two_ranks_lose_no_step_through_redis_and_service_kills(tmp_path: Path) -> None:
    env = {"ENTMON_DATA_DIR": str(tmp_path / "data"), "ENTMON_REDIS_TIMEOUT_S": "1"}
    server = ServerProcess(env).start()
    ranks = [
        Monitor(RUN, server.url, rank=r, world_size=2, spool_dir=tmp_path / "spool", config=CONFIG)
        for r in (0, 1)
    ]
    step = 0

    def stream(count: int) -> None:
        nonlocal step
        for _ in range(count):
            for mon in ranks:
                mon.log(step, entropy=2.0 - step / STEPS, reward=0.1 * mon.rank)
            alive(server.url)
            step += 1

    def kill_redis() -> None:
        redis = embedded_redis(server)
        os.kill(redis.pid, signal.SIGKILL)
        stream(200)  # through the outage and the restart
        wait_for(lambda: not psutil.pid_exists(redis.pid), "the killed redis-server reaped")
        wait_for(lambda: ready(server.url), "ready again after the redis kill")

    try:
        stream(200)
        wait_for(lambda: all_stored(server.url, step), "the first steps stored")
        kill_redis()
        kill_redis()
        assert restarts(server.url) == 2

        redis = embedded_redis(server)
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.stop()
        stream(200)  # nobody there: the ranks spool
        wait_for(lambda: gone(redis), "the killed service's redis-server to exit")
        server = ServerProcess(env, port=server.port).start()  # the supervisor's restart
        stream(STEPS - step)

        wait_for(lambda: all_stored(server.url, STEPS), "every step of both ranks stored")
        for mon in ranks:
            mon.close(30)
            assert mon.dropped == 0
        assert sorted(stored(server.url).items()) == [(s, 2) for s in range(STEPS)]
        assert not list((tmp_path / "spool").glob("*.jsonl"))  # all replayed, none set aside
        assert ready(server.url)
    finally:
        for mon in ranks:
            mon.close(0)
        server.stop()


def teardown_module() -> None:
    HTTP.close()
