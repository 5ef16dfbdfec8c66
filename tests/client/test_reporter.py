"""The reporter against a real `entmon serve` (real Redis): delivery, order, rejection, spool,
drops, a monitor answering 503, and fork safety."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from client import Monitor
from client.replay import replay_file
from client.report import build_report, encode, finalize
from client.spool import Spool, dead_letter_path, spool_path
from monitor.embedded_redis import EmbeddedRedis, free_port
from tests.client.conftest import FAST, stored_reports, stored_steps, unused_url
from tests.conftest import ServerProcess, wait_until_ready

WAIT_S = 20.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_reports_arrive_once_in_order_with_the_control_version_they_used(
    shared_server: ServerProcess, acknowledged: list[tuple[int, int]]
) -> None:
    with Monitor(run="in-order", url=shared_server.url, config=FAST) as mon:
        for step in range(100):
            mon.log(step, entropy=1.0, reward=0.5, lr=1e-6)
    assert acknowledged == [(0, s) for s in range(100)]
    assert stored_reports(shared_server.url, "in-order") == 100
    steps = stored_steps(shared_server.url, "in-order")
    assert {s["control_version"] for s in steps} == {0}
    assert mon.dropped == 0


def test_a_report_the_monitor_rejects_is_dropped_alone_and_counted(
    shared_server: ServerProcess,
) -> None:
    too_many = {f"u{i}": 1.0 for i in range(200)}  # the service takes 128 user scalars
    with Monitor(run="reject", url=shared_server.url, config=FAST) as mon:
        for step in range(10):
            mon.log(step, entropy=1.0, **(too_many if step == 5 else {}))
            if step == 5:  # let the bad batch be judged before the next report is encoded
                wait_for(lambda: mon.dropped == 1, "the rejection")
    steps = stored_steps(shared_server.url, "reject")
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert sum(s["stats"].get("client_drops", 0) for s in steps) == 1  # type: ignore[attr-defined]


def test_without_a_spool_the_queue_holds_reports_until_the_monitor_is_back(
    redis_url: str, tmp_path: Path, spool_dir: Path, acknowledged: list[tuple[int, int]]
) -> None:
    port = free_port()
    config = dataclasses.replace(FAST, spool=False)
    mon = Monitor(run="no-spool", url=f"http://127.0.0.1:{port}", config=config)
    for step in range(50):
        mon.log(step, entropy=1.0)
    server = ServerProcess({"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}, port)
    server.start()
    try:
        for step in range(50, 100):
            mon.log(step, entropy=1.0)
        mon.close(10)
        assert acknowledged == [(0, s) for s in range(100)]
        assert stored_reports(server.url, "no-spool") == 100
    finally:
        server.stop()
    assert not spool_dir.exists()


def test_a_full_spool_drops_and_the_next_report_that_gets_through_counts_them(
    redis_url: str, tmp_path: Path, spool_dir: Path
) -> None:
    port = free_port()
    config = dataclasses.replace(FAST, spool_max_bytes=2000)
    mon = Monitor(run="full", url=f"http://127.0.0.1:{port}", config=config)
    for step in range(50):
        mon.log(step, entropy=1.0)
        time.sleep(0.005)  # several batches: dropped reports carry the earlier drops
    wait_for(lambda: mon._reporter.spooled + mon.dropped == 50, "spooling")
    kept = mon._reporter.spooled
    assert 0 < kept < 50 and mon.dropped == 50 - kept
    assert spool_path(spool_dir, "full", 0).stat().st_size <= 2000
    server = ServerProcess({"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}, port)
    server.start()
    try:
        wait_for(lambda: stored_reports(server.url, "full") == kept, "the spool replay")
        mon.log(50, entropy=1.0)
        mon.close(10)
        steps = stored_steps(server.url, "full")
        assert [s["step"] for s in steps] == [*range(kept), 50]
        assert steps[-1]["stats"]["client_drops"] == 50 - kept  # type: ignore[index]
    finally:
        server.stop()


def test_a_spool_left_by_an_earlier_process_goes_out_first(
    redis_url: str, tmp_path: Path, spool_dir: Path, acknowledged: list[tuple[int, int]]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = Monitor(run="resume", url=url, config=FAST)
    for step in range(20):
        first.log(step, entropy=1.0)
    first.close(2)
    assert spool_path(spool_dir, "resume", 0).exists()
    server = ServerProcess({"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}, port)
    server.start()
    try:
        with Monitor(run="resume", url=url, config=FAST) as again:
            for step in range(20, 30):
                again.log(step, entropy=1.0)
        assert acknowledged == [(0, s) for s in range(30)]
        assert stored_reports(url, "resume") == 30
    finally:
        server.stop()
    assert not spool_path(spool_dir, "resume", 0).exists()


def test_a_monitor_answering_503_spools_until_redis_is_back(
    tmp_path: Path, spool_dir: Path, acknowledged: list[tuple[int, int]]
) -> None:
    store = EmbeddedRedis(tmp_path / "redis", appendfsync="always").start()
    env = {
        "ENTMON_REDIS_URL": store.url,
        "ENTMON_DATA_DIR": str(tmp_path),
        "ENTMON_REDIS_TIMEOUT_S": "0.5",
    }
    server = ServerProcess(env).start()
    try:
        with Monitor(run="five-oh-three", url=server.url, config=FAST) as mon:
            for step in range(10):
                mon.log(step, entropy=1.0)
            wait_for(lambda: len(acknowledged) == 10, "the first reports")
            store.stop()
            for step in range(10, 30):
                mon.log(step, entropy=1.0)
            wait_for(lambda: spool_path(spool_dir, "five-oh-three", 0).exists(), "spooling")
            store = EmbeddedRedis(tmp_path / "redis", port=store.port).start()
            for step in range(30, 40):
                mon.log(step, entropy=1.0)
            wait_for(lambda: len(acknowledged) == 40, "the replay")
        assert acknowledged == [(0, s) for s in range(40)]
        assert stored_reports(server.url, "five-oh-three") == 40
        assert redis.Redis.from_url(store.url).ping()
    finally:
        server.stop()
        store.stop()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_sends_nothing_and_the_parent_goes_on(shared_server: ServerProcess) -> None:
    mon = Monitor(run="fork", url=shared_server.url, config=FAST)
    mon.log(0, entropy=1.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must neither send nor hang on the parent's reporter
        code = 1
        try:
            mon.log(1000, entropy=1.0)
            started = time.monotonic()
            mon.close(5)
            code = 0 if time.monotonic() - started < 1.0 else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"\x00"
    os.close(read_end)
    for step in range(1, 5):
        mon.log(step, entropy=1.0)
    mon.close(10)
    steps = stored_steps(shared_server.url, "fork")
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4]
    assert not [t for t in threading.enumerate() if t.name == "entmon-reporter" and t.is_alive()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_reporter_thread_yields_the_cpu_to_the_training_thread() -> None:
    mon = Monitor(run="nice", url=unused_url(), config=FAST)
    try:
        wait_for(lambda: bool(reporter_thread_ids()), "the reporter thread")
        (tid,) = reporter_thread_ids()
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, mine + 10)
    finally:
        mon.close(1)


def reporter_thread_ids() -> list[int]:
    return [
        t.native_id
        for t in threading.enumerate()
        if t.name == "entmon-reporter" and t.is_alive() and t.native_id is not None
    ]


class PoisonServer(ServerProcess):
    """The real service, answering 500 to any batch that holds the user scalar `poison`."""

    def start(self) -> PoisonServer:
        command = [sys.executable, "-m", "tests.client.poison_server", str(self.port)]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_until_ready(self.url, self.process)
        return self


@pytest.fixture
def poison_server(redis_url: str, tmp_path: Path) -> Iterator[PoisonServer]:
    server = PoisonServer({"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)})
    yield server.start()
    server.stop()


def test_a_report_the_monitor_keeps_answering_500_is_set_aside_and_the_run_goes_on(
    poison_server: PoisonServer, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="client"),
        Monitor(run="poison", url=poison_server.url, config=FAST) as mon,
    ):
        for step in range(30):
            mon.log(step, entropy=1.0, **({"poison": 1.0} if step == 10 else {}))
        wait_for(lambda: mon.dropped == 1, "the poison report to be set aside")
        mon.log(30, entropy=1.0)  # the next report that gets through counts it
    steps = stored_steps(poison_server.url, "poison")
    assert [s["step"] for s in steps] == [s for s in range(31) if s != 10]
    assert sum(s["stats"].get("client_drops", 0) for s in steps) == 1  # type: ignore[attr-defined]
    dead = dead_letter_path(spool_path(spool_dir, "poison", 0))
    assert [json.loads(line)["step"] for line in dead.read_bytes().splitlines()[1:]] == [10]
    set_aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(set_aside) == 1 and str(dead) in set_aside[0]


def test_replay_sets_a_poison_report_aside_and_stores_the_rest(
    poison_server: PoisonServer, tmp_path: Path
) -> None:
    spool = Spool(spool_path(tmp_path, "poison-replay", 0), run="poison-replay")
    scalars = [{"entropy": 1.0, **({"poison": 1.0} if s == 3 else {})} for s in range(10)]
    spool.append([encode(finalize(build_report(s, 0, 1, 0, scalars[s]))) for s in range(10)])
    spool.close()
    result = replay_file(spool.path, url=poison_server.url, retry_base_s=0.01)
    assert result.complete and result.set_aside == 1
    assert result.accepted + result.duplicates == 9  # the refused batches' halves went twice
    assert not spool.path.exists()
    steps = stored_steps(poison_server.url, "poison-replay")
    assert [s["step"] for s in steps] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    dead = dead_letter_path(spool.path)
    assert [json.loads(line)["step"] for line in dead.read_bytes().splitlines()[1:]] == [3]


def test_a_step_closed_after_a_quiet_spell_is_sent_at_once(shared_server: ServerProcess) -> None:
    """The control lag (issue #17.8): a report is not held for the flush interval when nothing
    was sent lately, so the answer (with the control) is back before the next step ends. With an
    interval of a minute, the report must still be stored well within it."""
    config = dataclasses.replace(FAST, flush_interval_s=60.0, poll_interval_s=60.0)
    with Monitor(run="at-once", url=shared_server.url, config=config) as mon:
        mon.log(0, entropy=1.0)
        deadline = time.monotonic() + 30.0
        while not stored_steps(shared_server.url, "at-once") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s["step"] for s in stored_steps(shared_server.url, "at-once")] == [0]
