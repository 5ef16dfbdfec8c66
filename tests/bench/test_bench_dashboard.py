from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import bench_dashboard


def test_tiny_dashboard_bench_times_the_run_page_beside_the_floor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not Path(bench_dashboard.CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{bench_dashboard.CHROMIUM} missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{bench_dashboard.CHROMIUM} missing: apt-get install chromium")
    results = bench_dashboard.main(["--steps", "30", "--repeat", "1"])
    for condition in ("idle", "live"):
        row = results[condition]["30"]
        assert row["floor"] > 0 and row["run page"] > 0
        assert row["ratio"] == row["run page"] / row["floor"]
    out = capsys.readouterr().out
    assert "run reporting every second" in out and "ratio" in out
