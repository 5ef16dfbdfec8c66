"""`entmon serve --workers N`: N uvicorn processes, each listening on its own SO_REUSEPORT socket.

uvicorn's own `--workers` share one listening socket, and the process that wakes first accepts
every pending connection: the long-lived keep-alive connections of training clients piled onto
one worker (16 clients, 2 workers: one worker did all the work, the other none). With one
SO_REUSEPORT socket per process the kernel spreads connections over the processes
(bench/README.md, bench_ingest.py --workers 2).

The processes keep no state (everything is in Redis). If one dies, the others are stopped and
`serve` exits non-zero, for the supervisor (systemd, Kubernetes) to restart the whole service.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
from multiprocessing.connection import wait
from types import FrameType

import uvicorn

from monitor.embedded_redis import die_with_parent

log = logging.getLogger("monitor")
APP = "monitor.main:create_app"
STOP_TIMEOUT_S = 10.0


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run(sock: socket.socket, log_level: str) -> None:
    """Serve the app on `sock` in this process until SIGINT / SIGTERM."""
    server = uvicorn.Server(uvicorn.Config(APP, factory=True, log_level=log_level))
    server.run(sockets=[sock])
    if not server.started:  # the app's start-up failed; uvicorn.run exits 3 here too
        raise SystemExit(3)


def _worker(host: str, port: int, log_level: str) -> None:
    die_with_parent()
    run(bind(host, port, reuse_port=True), log_level)


def serve_workers(host: str, port: int, workers: int, log_level: str) -> int:
    """Run `workers` processes on host:port until SIGINT / SIGTERM (0) or one of them dies (1)."""
    if port == 0:
        raise ValueError("--workers > 1 needs a fixed --port: each process binds the same one")
    bind(host, port, reuse_port=True).close()  # a taken port fails here, not in N children
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(target=_worker, args=(host, port, log_level), name=f"entmon-worker-{i}")
        for i in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.start()
        while not stopping and all(p.is_alive() for p in procs):
            wait([p.sentinel for p in procs], timeout=0.5)
        if not stopping:
            dead = [f"{p.name} (exit {p.exitcode})" for p in procs if not p.is_alive()]
            log.error("worker died: %s; stopping the others", ", ".join(dead))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for p in procs:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if stopping else 1
