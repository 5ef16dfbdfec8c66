"""Shared fixtures: one real redis-server per test session (flushed between tests), the app in
process against it, and `entmon serve` as a real uvicorn process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Page, sync_playwright

from monitor.embedded_redis import EmbeddedRedis, free_port

SERVER_START_TIMEOUT_S = 120.0  # a ceiling: beside CPU hogs a start took over 30 s
# Without tokens the service serves loopback Host headers only (monitor/auth.py).
LOCAL = "http://127.0.0.1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip `cuda`-marked tests, with the reason, where torch sees fewer CUDA devices than they
    need (`@pytest.mark.cuda(devices=2)`; one by default). `make gpu-check` runs them."""
    marked = [(item, item.get_closest_marker("cuda")) for item in items]
    marked = [(item, m) for item, m in marked if m is not None]
    if not marked:
        return
    import torch  # only when such a test was collected

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item, marker in marked:
        need = int(marker.kwargs.get("devices", 1))
        if have < need:
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU build")
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs {need} CUDA device(s), {build} sees {have}: "
                    "run `make gpu-check` on a GPU machine"
                )
            )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync="everysec") as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(autouse=True)
def _clean_entmon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's ENTMON_* settings."""
    for name in list(os.environ):
        if name.startswith("ENTMON_"):
            monkeypatch.delenv(name)


def wait_until_ready(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not ready after {SERVER_START_TIMEOUT_S}s")


class ServerProcess:
    """`entmon serve` as a real process; `env` overrides go on top of a clean environment."""

    def __init__(
        self, env: dict[str, str], port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.args = args
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")} | env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        command = [sys.executable, "-m", "entmon.cli", "serve", "--port", str(self.port)]
        command += self.args
        self.process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_until_ready(self.url, self.process)
        return self

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `entmon serve` process on a free port, on the session's Redis."""
    proc = ServerProcess({"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}).start()
    yield proc
    proc.stop()


CHROMIUM = "/usr/bin/chromium"
# The flags that keep chromium quiet on a machine without network or display.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (make test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        yield page
        browser.close()
