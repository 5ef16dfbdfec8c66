from __future__ import annotations

import pytest
import torch

from bench import bench_loss


def test_runs_tiny_and_reports_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench_loss.main(["--sizes", "2048", "--repeat", "1"])
    assert [r["mode"] for r in rows] == ["vanilla", "clip_cov", "kl_cov"]
    for r in rows:
        assert r["n"] == 2048 and r["verl_cpu_ms"] > 0 and r["ours_cpu_ms"] > 0
        assert r["cpu_ratio"] == pytest.approx(r["ours_cpu_ms"] / r["verl_cpu_ms"])
        assert r["dtype"] == "fp32" and r["device"] == "cpu"
    assert "kl_cov" in capsys.readouterr().out


def test_bf16_inputs_are_measured_too() -> None:
    rows = bench_loss.main(["--sizes", "2048", "--repeat", "1", "--dtypes", "fp32,bf16"])
    assert [(r["dtype"], r["mode"]) for r in rows] == [
        (dtype, mode) for dtype in ("fp32", "bf16") for mode in bench_loss.MODES
    ]
    assert all(r["wall_ratio"] > 0 and r["loss_only_wall_ratio"] > 0 for r in rows)


def test_bad_options_are_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_loss.main(["--dtypes", "fp32,fp8"])
    assert "unknown ['fp8']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench_loss.main(["--device", "cuda"])
        assert "sees no CUDA device" in capsys.readouterr().err
