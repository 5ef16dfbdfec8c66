"""Smoke test: the control-lag benchmark runs end to end, small (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_control_lag.py"


def test_control_lag_benchmark_runs_small_and_prints_its_table() -> None:
    command = [sys.executable, str(BENCH), "--step-times", "0.02", "--changes", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("   0.02")]
    assert len(rows) == 2 and all(row[-4] == "2" for row in rows)  # two transports, 2 changes
