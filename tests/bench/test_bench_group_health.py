from __future__ import annotations

from bench import bench_group_health
from client.stats import StepAccumulator


def test_runs_tiny_and_puts_the_real_method_back() -> None:
    real = StepAccumulator._add_groups
    (row,) = bench_group_health.main(["--sizes", "2048", "--repeat", "2"])
    assert row["n"] == 2048 and row["with_ms"] > 0 and row["without_ms"] > 0
    assert StepAccumulator._add_groups is real
