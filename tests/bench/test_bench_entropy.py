from __future__ import annotations

from bench import bench_entropy


def test_runs_tiny_and_measures_both_variants() -> None:
    result = bench_entropy.main(["--tokens", "256", "--vocab", "8192", "--repeat", "1"])
    assert result["naive_ms"] > 0 and result["chunked_ms"] > 0
    assert result["naive_extra_mib"] > 0  # the full softmax shows up in the peak
    assert result["chunked_max_error"] < 1e-5
