"""Smoke test: the ingest benchmark runs end to end, small (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_ingest.py"


def test_ingest_benchmark_runs_small_and_prints_the_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "0.5", "--clients", "2", "--batch", "4"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio batched / raw Redis ceiling:" in result.stdout
    assert "HTTP single" in result.stdout and "raw Redis pipeline 4" in result.stdout
