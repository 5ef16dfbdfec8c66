"""Client fixtures: a private spool directory per test, a shared real server, a server that
never answers, and a connection that records what the monitor acknowledged, in order."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from client.connection import MonitorConnection, Reply
from client.report import step_of
from client.reporter import ReporterConfig
from monitor.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import ServerProcess

# Quick retries and polls so tests wait little; the transport logic is the same.
FAST = ReporterConfig(
    flush_interval_s=0.02, retry_base_s=0.05, retry_max_s=0.25, poll_interval_s=0.2
)


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@contextmanager
def host_reads_forbidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside, any read of a tensor's value on the host (a host-device sync on CUDA) raises."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host-device synchronisation")

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, forbidden)
        yield


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _clean_entmon_env: None) -> Path:
    directory = tmp_path / "spool"
    monkeypatch.setenv("ENTMON_SPOOL_DIR", str(directory))
    return directory


@pytest.fixture(scope="module")
def shared_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One `entmon serve` for a module's tests; each test uses its own run names."""
    env = {
        "ENTMON_REDIS_URL": redis_server.url,
        "ENTMON_DATA_DIR": str(tmp_path_factory.mktemp("d")),
    }
    proc = ServerProcess(env).start()
    yield proc
    proc.stop()


class SilentServer:
    """Accepts connections, reads what comes, never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() would not
        self.sock.close()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def acknowledged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(rank, step) of every report the monitor acknowledged, in the order it did."""
    seen: list[tuple[int, int]] = []

    class Recording(MonitorConnection):
        def post_reports(
            self, run: str, lines: list[bytes], *, timeout_s: float | None = None
        ) -> Reply:
            reply = super().post_reports(run, lines, timeout_s=timeout_s)
            if reply.ok:
                seen.extend(step_of(line) for line in lines)
            return reply

    monkeypatch.setattr("client.monitor.MonitorConnection", Recording)
    return seen


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def stored_reports(url: str, run: str) -> int:
    r = httpx.get(f"{url}/v1/runs/{run}")
    return int(r.json()["reports"]) if r.status_code == 200 else 0


def stored_steps(url: str, run: str) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/v1/runs/{run}/steps")
    return list(r.json()["steps"]) if r.status_code == 200 else []


B, T, V = 4, 32, 50  # sequences, tokens, vocabulary


class Decoder:
    def decode(self, token_ids: list[int]) -> str:
        return "".join(f"<{t}>" for t in token_ids)


def micro_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    log_prob = torch.randn(B, T, generator=g).mul(0.5).sub(1.0)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    return {
        "log_prob": log_prob,
        "old_log_prob": log_prob + torch.randn(B, T, generator=g).mul(0.05),
        "advantages": torch.randn(B, 1, generator=g).expand(B, T).contiguous(),
        "response_mask": mask,
        "entropy": torch.rand(B, T, generator=g).mul(3.0),
        "token_ids": torch.randint(0, V, (B, T), generator=g),
    }
