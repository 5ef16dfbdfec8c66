"""`entmon serve --workers N`: one SO_REUSEPORT socket per process, so the kernel spreads the
keep-alive connections of many clients over the workers; they stop with the service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess

CONNECTIONS = 16


def _post(sock: socket.socket, step: int) -> int:
    body = json.dumps({"step": step, "stats": {"entropy": 1.0}}).encode()
    head = (
        f"POST /v1/runs/w/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(65536)
    head_part, _, rest = reply.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head_part.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )  # fmt: skip
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head_part.split()[1])


def _workers(server: ServerProcess) -> list[psutil.Process]:
    assert server.process is not None
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def test_keep_alive_connections_spread_over_the_workers_and_all_stop(tmp_path: Path) -> None:
    server = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}, args=("--workers", "2")).start()
    try:
        assert server.process is not None
        family = psutil.Process(server.process.pid).children(recursive=True)
        workers = _workers(server)
        assert len(workers) == 2
        assert any("redis-server" in p.name() for p in family)  # the embedded Redis, once
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(CONNECTIONS)]
        try:
            assert [_post(s, step) for step, s in enumerate(socks)] == [200] * CONNECTIONS
            per_worker = [
                sum(
                    1 for c in w.net_connections()
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
                )
                for w in workers
            ]  # fmt: skip
        finally:
            for s in socks:
                s.close()
        # 16 connections hashed over two sockets: all on one has probability 2^-15
        assert sum(per_worker) == CONNECTIONS and min(per_worker) > 0, per_worker
        steps = httpx.get(f"{server.url}/v1/runs/w/steps").json()["steps"]
        assert [s["step"] for s in steps] == list(range(CONNECTIONS))
    finally:
        code = server.stop()
    assert code == 0
    _, alive = psutil.wait_procs(family, timeout=15)  # the workers, Redis, multiprocessing's helper
    assert not alive


def test_a_dead_worker_stops_the_service_with_an_error(tmp_path: Path) -> None:
    server = ServerProcess({"ENTMON_DATA_DIR": str(tmp_path)}, args=("--workers", "2")).start()
    assert server.process is not None
    family = psutil.Process(server.process.pid).children(recursive=True)
    try:
        os.kill(_workers(server)[0].pid, signal.SIGKILL)
        assert server.process.wait(30) == 1
        assert server.process.stderr is not None
        assert b"worker died" in server.process.stderr.read()
    finally:
        server.stop()  # a failed assertion leaves no service behind
    _, alive = psutil.wait_procs(family, timeout=15)  # the workers, Redis, multiprocessing's helper
    assert not alive


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_a_clear_error(tmp_path: Path, redis_url: str, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
        env |= {"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}
        command = [sys.executable, "-m", "entmon.cli", "serve", "--port", str(port)]
        done = subprocess.run(
            [*command, "--workers", workers], env=env, capture_output=True, timeout=60
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr.decode()


def test_workers_need_a_fixed_port(tmp_path: Path, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    env |= {"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "entmon.cli", "serve", "--port", "0", "--workers", "2"]
    done = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert done.returncode == 1 and "needs a fixed --port" in done.stderr.decode()
