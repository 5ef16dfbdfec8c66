"""`make gpu-check`: the client on CUDA in one command, safe to run anywhere.

With CUDA:
  1. the CUDA-marked tests (every test file under tests/ that uses `pytest.mark.cuda`): device
     against CPU for entropy, covariance, histograms, top-k, the three losses and the step
     statistics; `Monitor.policy_loss` + `log()` for 200+ steps under
     `torch.cuda.set_sync_debug_mode("error")` against a real `entmon serve`; two NCCL ranks
     switching control at the same step (needs two GPUs: skipped, with the reason, on one);
  2. bench_loss on the GPU beside verl's losses, 16k to 1M tokens, fp32 and bf16;
  3. bench_entropy on the GPU beside verl's, at Qwen's 151,936 vocabulary, fp32 and bf16
     logits: time and the allocator's peak, chunked against naive.
Without CUDA: says so, runs the same tests (each skips, naming why) and both benches tiny on
CPU, and exits 0. A GPU that nvidia-smi lists but torch cannot use (a CPU build of torch) is an
error: exit 1 before running anything, so that a GPU machine never passes by skipping.

    python -m bench.gpu_check            # from the repository root (make gpu-check)
    python -m bench.gpu_check --quick    # on CUDA: the benches at their smallest size only
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MARKER = "pytest.mark.cuda"
QWEN_VOCAB = 151_936


def cuda_test_files() -> list[str]:
    """Test files that hold CUDA-marked tests, found by their marker: none is forgotten."""
    files = sorted((ROOT / "tests").rglob("test_*.py"))
    return [str(p.relative_to(ROOT)) for p in files if MARKER in p.read_text()]


def gpus_listed_by_nvidia_smi() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]


def stages(cuda: bool, quick: bool) -> list[tuple[str, list[str]]]:
    python = [sys.executable, "-m"]
    tests = [*python, "pytest", "-m", "cuda", "-rs", "-v", *cuda_test_files()]
    if not cuda:  # the kit on CPU: tiny benches, to prove they run
        return [
            ("CUDA-marked tests (they skip here, each naming why)", tests),
            ("bench_loss on CPU (tiny)", [*python, "bench.bench_loss", "--sizes", "4096",
                                          "--repeat", "1", "--dtypes", "fp32,bf16"]),
            # without verl: on CPU each variant's memory child would import it (slow)
            ("bench_entropy on CPU (tiny)", [*python, "bench.bench_entropy", "--tokens", "256",
                                             "--vocab", "4096", "--repeat", "1", "--no-verl"]),
        ]  # fmt: skip
    sizes = "16384" if quick else "16384,65536,262144,1048576"
    tokens = "1024" if quick else "8192"
    loss = [*python, "bench.bench_loss", "--device", "cuda", "--sizes", sizes]
    loss += ["--dtypes", "fp32,bf16", "--repeat", "5" if quick else "25"]
    entropy = [*python, "bench.bench_entropy", "--device", "cuda", "--tokens", tokens]
    entropy += ["--vocab", str(QWEN_VOCAB), "--repeat", "3"]
    return [
        ("CUDA-marked tests", tests),
        ("bench_loss on the GPU: ours / verl, fp32 and bf16", loss),
        ("bench_entropy on the GPU, fp32 logits", [*entropy, "--dtype", "fp32"]),
        ("bench_entropy on the GPU, bf16 logits", [*entropy, "--dtype", "bf16"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="benches at their smallest size")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'})"
    if cuda:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"gpu-check: {build}, {len(names)} CUDA device(s): {', '.join(names)}", flush=True)
    else:
        listed = gpus_listed_by_nvidia_smi()
        if listed:
            print(
                f"gpu-check: nvidia-smi lists {len(listed)} GPU(s) ({listed[0]}) but {build} "
                "cannot use them. Install a CUDA build of torch into this environment (PyPI's "
                "default Linux wheel is one) and run again.",
                flush=True,
            )
            return 1
        print(
            f"gpu-check: no CUDA here ({build}): running what runs on CPU; every CUDA check "
            "skips, and this exits 0",
            flush=True,
        )
    results = []
    for title, command in stages(cuda, args.quick):
        print(f"\n=== {title}\n$ {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        code = subprocess.run(command, cwd=ROOT).returncode
        results.append((title, code, time.monotonic() - start))
    print("\n=== gpu-check summary" + ("" if cuda else " (no CUDA: CPU part only)"))
    for title, code, seconds in results:
        print(f"{'ok' if code == 0 else f'FAILED ({code})':>11}  {seconds:6.0f} s  {title}")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
