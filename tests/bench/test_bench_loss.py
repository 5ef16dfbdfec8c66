from __future__ import annotations

import pytest

from bench import bench_loss


def test_runs_tiny_and_reports_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench_loss.main(["--sizes", "2048", "--repeat", "1"])
    assert [r["mode"] for r in rows] == ["vanilla", "clip_cov", "kl_cov"]
    for r in rows:
        assert r["n"] == 2048 and r["verl_cpu_ms"] > 0 and r["ours_cpu_ms"] > 0
        assert r["cpu_ratio"] == pytest.approx(r["ours_cpu_ms"] / r["verl_cpu_ms"])
    assert "kl_cov" in capsys.readouterr().out
