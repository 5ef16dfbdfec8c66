"""The distribution's shape: the server and dashboard never import torch; the CLI's contract."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["monitor.main", "entmon.cli", "dashboard.api"])
def test_server_and_dashboard_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "entmon.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def test_cli_lists_its_subcommands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for sub in ("serve", "dashboard", "demo", "replay"):
        assert sub in result.stdout


def test_serve_refuses_a_public_bind_without_tokens() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert result.returncode == 2
    assert "ENTMON_INGEST_TOKENS" in result.stderr
