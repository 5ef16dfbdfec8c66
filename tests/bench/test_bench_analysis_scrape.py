"""Smoke test: the analysis scrape benchmark runs end to end, small (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_analysis_scrape.py"


def test_analysis_scrape_benchmark_runs_small_and_prints_the_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--steps", "600", "--points", "50", "--repeat", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio full / sampled:" in result.stdout
    assert "sampled read + analysis (" in result.stdout and "(600 steps)" in result.stdout
