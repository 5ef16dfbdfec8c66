"""Smoke test: the scrape-scaling benchmark runs end to end, small (figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_scrape.py"


def test_scrape_benchmark_runs_small_through_a_real_service_and_prints_growth_and_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "3,8", "--steps", "40", "--repeat", "1", "--http"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 runs x 40 steps: /metrics" in result.stdout
    assert "ratio previous / now:" in result.stdout
    assert "growth per run (3 -> 8 runs)" in result.stdout
    assert result.stdout.count("through HTTP (entmon serve): /metrics") == 2  # a real service


def test_side_by_side_reads_seed_a_given_redis_and_print_the_redis_side(redis_url: str) -> None:
    reads = BENCH.with_name("bench_scrape_reads.py")
    root = str(BENCH.parents[1])
    result = subprocess.run(
        [sys.executable, str(reads), redis_url, "--seed", "5", "--steps", "30", "--repeat", "1"],
        capture_output=True, text=True, timeout=300, check=False,
        env=os.environ | {"PYTHONPATH": root},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split(" wall ")[0].split() for line in lines] == [
        ["this", "5", "runs", "/metrics"],
        ["this", "5", "runs", "GET", "/v1/runs"],
    ]
    assert all("(script calls 1)" in line for line in lines)  # five runs: one script call
