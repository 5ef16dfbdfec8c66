"""Issue #16.8: /metrics reads each run's analysis gauges from Redis (kept up to date after
ingest by a background task) instead of analysing every run at every scrape; the run list and
the scrape read each run in one script call. Real server, real Redis; the costs themselves are
measured by bench/bench_scrape.py, not here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from unittest import mock

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from monitor.report_codec import report_from_python
from monitor.store import (
    DRIVER_LAG_STEPS,
    RANK_SCAN_MAX,
    RANK_SCAN_STEPS,
    RUNS_PER_CALL,
    RunKeys,
    RunRead,
    Store,
    _run_read,
)
from tests.conftest import ServerProcess


def wait_for(check: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ceiling(url: str, run: str) -> float | None:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == "entmon_predicted_reward_ceiling" and s.labels == {"run": run}:
                return s.value
    return None


def law_steps(lo: int, hi: int) -> list[dict[str, object]]:
    out = []
    for t in range(lo, hi):
        h = 1.2 * 0.99**t
        out.append({"step": t, "stats": {"entropy": h, "reward": 1.0 - 0.3 * 2.718281828**h}})
    return out


def test_the_scrape_reads_stored_gauges_and_ingest_refreshes_them(
    server: ServerProcess, redis_url: str
) -> None:
    assert httpx.post(f"{server.url}/v1/runs/r1/reports", json=law_steps(0, 60)).status_code == 200
    wait_for(lambda: ceiling(server.url, "r1") is not None, "the run's gauges")
    gauges = RunKeys.of("r1").gauges
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.hget(gauges, "step") == "59"
        client.hset(gauges, "ceiling", "123.5")  # still describes step 59 and control 0
        assert ceiling(server.url, "r1") == 123.5  # read, not analysed again at the scrape

        # a new step: the background task analyses the run again, no scrape needed
        httpx.post(f"{server.url}/v1/runs/r1/reports", json=law_steps(60, 61))
        wait_for(lambda: client.hget(gauges, "step") == "60", "the refresh after ingest")
        assert ceiling(server.url, "r1") != 123.5

        # a control change makes them stale: the next scrape analyses the run itself
        client.hset(gauges, "ceiling", "123.5")
        put = httpx.put(
            f"{server.url}/v1/runs/r1/control",
            json={"loss_mode": "kl_cov"},
            headers={"If-Match": '"0"'},
        )
        assert put.status_code == 200
        assert ceiling(server.url, "r1") != 123.5
        assert client.hget(gauges, "control_version") == "1"
    finally:
        client.close()


def test_run_list_and_scrape_agree_with_the_single_run_reads(server: ServerProcess) -> None:
    reports = [
        {"step": s, "rank": r, "world_size": 2, "control_version": 0, "stats": {"entropy": 1.0}}
        for s in range(20)
        for r in (0, 1)
    ]
    reports.append({"step": 19, "rank": -1, "stats": {"reward": 0.5}})  # a driver
    reports.append({"step": 20, "rank": 0, "world_size": 2, "stats": {"entropy": 2.0}})
    assert httpx.post(f"{server.url}/v1/runs/r1/reports", json=reports).status_code == 200
    assert httpx.post(f"{server.url}/v1/runs/r2/reports", json={"step": 3}).status_code == 200
    listed = {r["run"]: r for r in httpx.get(f"{server.url}/v1/runs").json()["runs"]}
    assert set(listed) == {"r1", "r2"}
    one = httpx.get(f"{server.url}/v1/runs/r1").json()
    assert listed["r1"] == one
    assert one["latest"]["step"] == 19 and one["latest"]["driver"]  # the driver's step wins
    assert one["latest"]["stats"]["reward"] == 0.5 and one["latest"]["ranks"] == 2
    assert [(r["rank"], r["step"]) for r in one["ranks"]] == [(0, 20), (1, 19)]
    assert one["first_step"] == 0 and one["reports"] == 42
    assert listed["r2"]["latest"]["step"] == 3


def test_runs_read_in_batches_come_back_in_order(redis_url: str) -> None:
    """Several script calls of RUNS_PER_CALL runs and several round trips: each run's read is
    its own, in order, a run without meta None, as read alone (its keys given, as on a cluster)."""

    async def reads() -> tuple[list[RunRead | None], list[RunRead | None]]:
        client = Redis.from_url(redis_url, decode_responses=True)
        store = Store(client, retention_steps=100)
        runs = [f"run-{i}" for i in range(2 * RUNS_PER_CALL + 3)]
        for i, run in enumerate(runs):
            if i != RUNS_PER_CALL:  # one run in the middle never reported
                report = report_from_python({"step": i, "stats": {"entropy": float(i)}})
                await store.ingest(run, [report])
        with mock.patch("monitor.store.PIPELINE_RUNS", RUNS_PER_CALL + 1):
            batched = await store.run_reads(runs, details=True, ranks=True)
        args = [1, DRIVER_LAG_STEPS, RANK_SCAN_STEPS, RANK_SCAN_MAX, 1]
        alone = []
        for run in runs:
            k = RunKeys.of(run)
            keys = [k.index, k.scalars, k.details, k.meta, k.control, k.gauges, k.thermostat]
            (reply,) = await store._snapshot(keys=keys, args=args)
            alone.append(_run_read(run, reply))
        await client.aclose()
        return batched, alone

    batched, alone = asyncio.run(reads())
    assert batched[RUNS_PER_CALL] is None
    assert [r.run for r in batched if r] == [
        f"run-{i}" for i in range(len(batched)) if i != RUNS_PER_CALL
    ]
    assert [r.latest.step if r and r.latest else None for r in batched] == [
        i if i != RUNS_PER_CALL else None for i in range(len(batched))
    ]
    assert batched == alone
