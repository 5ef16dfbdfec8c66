"""Smoke test: the log() latency benchmark runs end to end, small (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_log.py"


def test_log_benchmark_runs_small_and_prints_its_table() -> None:
    command = [sys.executable, str(BENCH), "--steps", "100", "--rounds", "1", "--only"]
    command.append("entmon,entmon-silent")
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "median us" in result.stdout and "entmon-silent" in result.stdout
    assert "reporter threads left: 0" in result.stderr  # the silent monitor's close
