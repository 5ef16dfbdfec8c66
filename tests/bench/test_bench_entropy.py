from __future__ import annotations

import pytest
import torch

from bench import bench_entropy


def test_runs_tiny_and_measures_every_variant_beside_verls() -> None:
    result = bench_entropy.main(["--tokens", "1024", "--vocab", "4096", "--repeat", "1"])
    for variant in ("naive", "chunked", "verl", "verl_chunked"):
        assert result[f"{variant}_ms"] > 0, variant
        assert result[f"{variant}_max_error"] < 1e-3, variant
    assert result["naive_extra_mib"] > 0  # the full softmax shows up in the peak
    assert result["chunked_max_error"] < 1e-5
    # Each child's own peak (about 0.6 of naive's at this size): getrusage's would be the
    # parent's size after importing verl, the same for every variant.
    assert result["chunked_extra_mib"] < 0.8 * result["naive_extra_mib"]
    assert result["memory_ratio_verl"] == pytest.approx(
        result["chunked_extra_mib"] / result["verl_extra_mib"]
    )


def test_bf16_logits_without_verl() -> None:
    result = bench_entropy.main(
        ["--tokens", "256", "--vocab", "4096", "--repeat", "1", "--dtype", "bf16", "--no-verl"]
    )
    assert "verl_ms" not in result
    assert result["chunked_max_error"] < 1e-5  # fp32 inside, whatever the logits' dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only torch")
def test_cuda_without_a_device_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_entropy.main(["--device", "cuda", "--tokens", "8", "--vocab", "8"])
    assert "sees no CUDA device" in capsys.readouterr().err
