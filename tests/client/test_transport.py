"""The client transport end to end, with real `entmon serve` processes and real Redis: a monitor
that is down, killed, or silent never costs the training loop its time or its reports, and a
control change reaches every rank at the same step."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from client import Monitor
from client.spool import Spool, spool_path
from monitor.embedded_redis import free_port
from tests.client.conftest import FAST, SilentServer, micro_batch, stored_reports, stored_steps
from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SCALARS = {f"s{i}": 0.001 * i for i in range(30)}


def reporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "entmon-reporter" and t.is_alive()]


def spooled_steps(path: Path) -> list[int]:
    spool = Spool(path)
    spool.open(create=False)
    try:
        lines, _ = spool.read(max_reports=1 << 30, max_bytes=1 << 30)
    finally:
        spool.close()
    return [json.loads(line)["step"] for line in lines]


def test_monitor_down_for_the_first_300_steps_then_up_every_step_arrives_once_in_order(
    redis_url: str, tmp_path: Path, acknowledged: list[tuple[int, int]]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ranks = [Monitor(run="late", url=url, rank=r, world_size=2, config=FAST) for r in (0, 1)]
    server = ServerProcess({"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}, port)
    try:
        for step in range(600):
            if step == 300:
                server.start()
            for mon in ranks:
                mon.log(step, entropy=1.0, **SCALARS)
            time.sleep(0.001)
        for mon in ranks:
            mon.close(60)  # returns once all is sent
        for rank in (0, 1):
            assert [s for r, s in acknowledged if r == rank] == list(range(600))
        assert stored_reports(url, "late") == 1200
        assert all(mon.dropped == 0 for mon in ranks)
    finally:
        server.stop()


def test_monitor_killed_and_restarted_mid_run_stores_every_logged_step(
    server: ServerProcess, acknowledged: list[tuple[int, int]]
) -> None:
    restarted = ServerProcess(server.env, server.port)
    try:
        with Monitor(run="crash", url=server.url, config=FAST) as mon:
            for step in range(1000):
                if step == 300:
                    assert server.process is not None
                    server.process.kill()  # SIGKILL: requests in flight die with it
                    server.process.wait()
                if step == 600:
                    restarted.start()
                mon.log(step, entropy=1.0, **SCALARS)
                time.sleep(0.002)
            mon.close(60)  # returns once all is sent; the default 5 s is short beside CPU hogs
        assert stored_reports(server.url, "crash") == 1000
        assert [s for _, s in acknowledged] == list(range(1000))
    finally:
        if restarted.process is not None:
            restarted.stop()


def test_a_monitor_that_never_answers_leaves_log_unblocked_and_close_leaves_no_thread(
    silent_server: SilentServer, spool_dir: Path
) -> None:
    """What it costs in time (log()'s p99, close's duration) is measured by
    `bench/bench_log.py --only entmon-silent`; here only the behaviour."""
    mon = Monitor(run="silent", url=silent_server.url)  # default timeouts
    for step in range(2000):
        mon.log(step, entropy=1.0, reward=0.5, **SCALARS)
    mon.close(2)
    assert not reporter_threads()
    spooled = spooled_steps(spool_path(spool_dir, "silent", 0))
    assert spooled == sorted(spooled) and len(spooled) + mon.dropped == 2000  # none lost unseen
    assert spooled  # the disk took the reports the silent monitor never answered


def test_interpreter_exit_closes_the_monitor_with_a_silent_monitor(
    silent_server: SilentServer, spool_dir: Path
) -> None:
    script = f"""
import atexit, threading
ended = []
@atexit.register  # registered first, so it runs last: after the Monitor's own exit handler
def report():
    alive = [t for t in threading.enumerate() if t.name == "entmon-reporter" and t.is_alive()]
    print(f"reporter_alive={{len(alive)}} ended={{len(ended)}}")
from client import Monitor
mon = Monitor(run="exit", url={silent_server.url!r})
for step in range(100):
    mon.log(step, entropy=1.0)
ended.append(True)  # no close(): the interpreter's exit must do it
"""
    env = os.environ | {"ENTMON_SPOOL_DIR": str(spool_dir)}
    command = [sys.executable, "-c", script]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    fields = dict(item.split("=") for item in result.stdout.split())
    assert fields == {"reporter_alive": "0", "ended": "1"}
    assert spooled_steps(spool_path(spool_dir, "exit", 0)) == list(range(100))


def put_control(url: str, run: str, version: int, **knobs: object) -> None:
    r = httpx.put(
        f"{url}/v1/runs/{run}/control",
        json={**knobs, "reason": "test"},
        headers={"If-Match": f'"{version}"'},
    )
    assert r.status_code == 200, r.text


def test_a_control_change_applies_at_a_step_boundary_and_reports_say_which_version(
    server: ServerProcess,
) -> None:
    used: list[int] = []
    with Monitor(run="ctl", url=server.url, config=FAST) as mon:
        for step in range(5000):  # a ceiling: it ends 5 steps after the change arrives
            used.append(mon.control.version)
            mon.policy_loss(**micro_batch(step))
            mon.log(step)
            if step == 10:
                put_control(server.url, "ctl", 0, loss_mode="kl_cov", kl_cov_ratio=0.01)
            if used.count(1) >= 5:
                break
            time.sleep(0.01)
        mon.close(60)  # returns once all is sent; the default 5 s is short beside CPU hogs
    assert mon.control.loss_mode == "kl_cov" and mon.control.kl_cov_ratio == 0.01
    switch = used.index(1)  # the first step that ran with version 1
    assert switch > 11  # the change came after step 10's boundary
    assert used == [0] * switch + [1] * (len(used) - switch)
    stored = stored_steps(server.url, "ctl")
    assert [s["control_version"] for s in stored] == used  # each report names its version
    # and the loss followed it: KL-Cov penalises tokens from the switch on, never before
    assert [s["stats"].get("penalised", 0) > 0 for s in stored] == [v == 1 for v in used]


def test_two_gloo_ranks_apply_a_control_change_at_the_same_step(
    server: ServerProcess, tmp_path: Path
) -> None:
    two_ranks_apply_a_control_change_at_the_same_step(server, tmp_path, "gloo")


def two_ranks_apply_a_control_change_at_the_same_step(
    server: ServerProcess, tmp_path: Path, backend: str
) -> None:
    """Two rank_worker processes on `backend` (tests/client/test_cuda_nccl.py: NCCL)."""
    steps = 150
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    env = os.environ | {"ENTMON_SPOOL_DIR": str(tmp_path / "spool")}
    worker = [sys.executable, "-m", "tests.client.rank_worker"]
    args = [str(tmp_path / "init"), server.url, "ddp", str(steps)]
    procs = [
        subprocess.Popen([*worker, str(r), "2", *args, str(outs[r]), backend], cwd=ROOT, env=env)
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = httpx.get(f"{server.url}/v1/runs/ddp")
            if r.status_code == 200 and (r.json()["last_step"] or 0) >= 20:
                break
            time.sleep(0.1)
        put_control(server.url, "ddp", 0, loss_mode="clip_cov")
        codes = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    used = [json.loads(out.read_text())["used"] for out in outs]
    assert used[0] == used[1]  # the same version at every step on both ranks
    switch = used[0].index(1)
    assert switch > 20 and used[0] == [0] * switch + [1] * (steps - switch)
    stored = stored_steps(server.url, "ddp")
    assert [s["ranks"] for s in stored] == [2] * steps
    assert [s["control_version"] for s in stored] == used[0]


class TricklingServer:
    """Answers every request with a header that never ends, one byte a second: each read gets
    data well within any per-read timeout, so only a whole-request deadline ends the request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stop.wait(1.0):  # the fault itself: a byte a second
                    conn.sendall(b"x")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


def test_a_trickling_answer_ends_at_the_request_timeout_and_the_reports_are_spooled(
    spool_dir: Path,
) -> None:
    server = TricklingServer()
    try:
        config = dataclasses.replace(FAST, request_timeout_s=1.0)
        mon = Monitor(run="trickle", url=server.url, config=config)
        for step in range(20):
            mon.log(step, entropy=1.0)
        deadline = time.monotonic() + 60  # without a whole-request deadline: never
        while mon._reporter.spooled < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mon._reporter.spooled == 20 and mon.dropped == 0
        mon.close(5)
    finally:
        server.close()
    assert spooled_steps(spool_path(spool_dir, "trickle", 0)) == list(range(20))
