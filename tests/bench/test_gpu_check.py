"""`make gpu-check`'s entry point on this CPU machine: it must say there is no CUDA, run the
CPU part and exit 0, so that the kit does not rot between GPU runs."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent.parent
cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="with CUDA the entry point is the real GPU run"
)


def run_check(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@cpu_only
def test_without_cuda_it_says_so_runs_the_cpu_part_and_exits_0() -> None:
    out = run_check()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "gpu-check: no CUDA here" in out.stdout
    # every CUDA test file was collected, and each of its tests skipped naming why
    reason = r"CUDA device\(s\), torch .* sees 0: run `make gpu-check` on a GPU machine"
    for path in gpu_check.cuda_test_files():
        assert re.search(rf"SKIPPED \[\d+\] {re.escape(path)}\S*: needs \d {reason}", out.stdout)
    assert re.search(r"=+ \d+ skipped, \d+ deselected in", out.stdout)  # none ran, none failed
    # both benches ran, tiny, on CPU
    assert "4096  bf16    kl_cov" in out.stdout
    assert "chunked / naive: time ratio" in out.stdout
    assert out.stdout.count("     ok ") == 3


def test_the_cuda_tests_are_found_by_their_marker() -> None:
    files = gpu_check.cuda_test_files()
    for name in ("test_cuda.py", "test_cuda_sync.py", "test_cuda_nccl.py", "test_histograms.py"):
        assert f"tests/client/{name}" in files


@cpu_only
def test_a_gpu_torch_cannot_use_is_an_error_not_a_skip(tmp_path: Path) -> None:
    # a machine whose nvidia-smi lists a GPU, with a CPU build of torch
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    out = run_check(os.environ | {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 1
    assert "nvidia-smi lists 1 GPU(s) (GPU 0: NVIDIA H200" in out.stdout
    assert "Install a CUDA build of torch" in out.stdout
    assert "===" not in out.stdout  # nothing ran
