"""The wheel on its own: built from this checkout, installed with the `all` extra into a fresh
virtual environment outside it, `entmon demo` and `entmon serve` work from there.

Slow (a few minutes: torch and Streamlit install into the new environment; pip's cache keeps
later runs from downloading again), and the only test that proves `pip install "entmon[all]"`
is enough: every other test imports the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.embedded_redis import free_port
from tests.conftest import wait_until_ready

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALL_TIMEOUT_S = 1500
TORCH = "torch==2.13.0"  # the Makefile's pin: the CPU wheel on these machines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(INSTALL_TIMEOUT_S + 600)]


def _run(command: list[str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=_outside_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-1500:]}{done.stderr[-3000:]}"
    return done.stdout


def _outside_env() -> dict[str, str]:
    """No PYTHONPATH into the checkout, no virtual environment of ours, no ENTMON_ settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ENTMON_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ folder of a fresh venv holding the wheel with [all]; cwd for the tests' runs."""
    place = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", "dist"],
         place, INSTALL_TIMEOUT_S)  # fmt: skip
    (wheel,) = (place / "dist").glob("entmon-*.whl")
    _run([sys.executable, "-m", "venv", "venv"], place, 120)
    pip = [str(place / "venv/bin/python"), "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, TORCH], place, INSTALL_TIMEOUT_S)
    _run([*pip, f"{wheel}[all]"], place, INSTALL_TIMEOUT_S)
    yield place / "venv/bin"


def test_the_installed_packages_come_from_the_wheel_not_the_checkout(installed: Path) -> None:
    code = "import client, dashboard, entmon, monitor; print(*(m.__file__ for m in (client, dashboard, entmon, monitor)))"  # noqa: E501
    files = _run([str(installed / "python"), "-c", code], installed.parent.parent, 60).split()
    assert len(files) == 4
    assert all(Path(f).is_relative_to(installed.parent) for f in files), files


def test_entmon_demo_runs_headless_from_the_wheel(installed: Path) -> None:
    out = _run(
        [str(installed / "entmon"), "demo", "--headless", "--steps", "20",
         "--port", str(free_port())],
        installed.parent.parent, 600,
    )  # fmt: skip
    assert "20/20 done" in out and "trained 20 steps" in out


def test_entmon_serve_runs_from_the_wheel(installed: Path) -> None:
    port = free_port()
    data = installed.parent.parent / "data"
    server = subprocess.Popen(
        [str(installed / "entmon"), "serve", "--port", str(port)],
        cwd=installed.parent.parent,
        env=_outside_env() | {"ENTMON_DATA_DIR": str(data)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", server)  # Redis up through the embedded one
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err[-2000:]
