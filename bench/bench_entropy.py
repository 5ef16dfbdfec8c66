"""Chunked token entropy versus the naive full-softmax formula and verl's, side by side in one run.

Naive: logsumexp(z) - sum(softmax(z) * z) over the whole [N, V] matrix at once (the formula of
verl's `entropy_from_logits`). Ours: `client.entropy.token_entropy`, the same quantity in row
chunks. With verl installed, verl's own `entropy_from_logits` ("verl") and
`entropy_from_logits_with_chunking` ("verl_chunked", 2048 rows) run beside them.

Peak extra memory: on CPU in a fresh child process per variant (peak resident set size while
computing, minus the resident size with the logits already in memory); on CUDA in this process
(the allocator's peak during the call minus what was allocated before it). Time is the best of
--repeat interleaved runs in this process (on CUDA the device is waited for). Goals: memory <=
1/8 of naive, time <= 1.1x.

    python -m bench.bench_entropy                        # N=8192, V=32768: ~1 GiB of logits
    python -m bench.bench_entropy --tokens 256 --vocab 1024 --repeat 1   # smoke
    python -m bench.bench_entropy --device cuda --vocab 151936 --dtype bf16   # Qwen's vocab
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from client.entropy import DEFAULT_CHUNK_SIZE, token_entropy

OURS = ("naive", "chunked")
VERL = ("verl", "verl_chunked")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Entropy = Callable[[torch.Tensor, int], torch.Tensor]


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def verl_functions() -> dict[str, Entropy]:
    """verl's two entropy functions, or none when verl is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # verl's import-time notices are not ours to judge
            from verl.utils import torch_functional as F
    except ImportError:
        return {}
    return {
        "verl": lambda z, _: F.entropy_from_logits(z),
        "verl_chunked": lambda z, _: F.entropy_from_logits_with_chunking(z),
    }


def variants(names: tuple[str, ...] = OURS + VERL) -> dict[str, Entropy]:
    found: dict[str, Entropy] = {
        "naive": lambda z, _: naive_entropy(z),
        "chunked": lambda z, chunk_size: token_entropy(z, chunk_size=chunk_size),
    }
    if any(name in VERL for name in names):
        found |= verl_functions()
    return {name: found[name] for name in names if name in found}


def make_logits(
    tokens: int,
    vocab: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    # Made where they are used and in place: a temporary here would set the process's peak
    # before the measurement starts.
    g = torch.Generator(device).manual_seed(0)
    return torch.randn(tokens, vocab, generator=g, device=device, dtype=dtype).mul_(3)


def _resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def _peak_resident_bytes() -> int:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: that also counts the
    parent's RSS at the fork that started this process (kept across exec by Linux), which
    made it the measure whenever the parent was the larger (after importing verl)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_resident() -> None:
    """Make the peak RSS the current one (Linux >= 4.0): otherwise it may be the imports',
    whose pages the machine's memory pressure has evicted since."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def measure_memory(variant: str, args: argparse.Namespace) -> int:
    """On CPU in this (fresh) process: peak RSS during one call minus RSS before it; on CUDA:
    the allocator's peak during the call minus what was allocated before it. Bytes."""
    torch.set_num_threads(1)
    device, fn = torch.device(args.device), variants((variant,))[variant]
    logits = make_logits(args.tokens, args.vocab, device=device, dtype=DTYPES[args.dtype])
    fn(logits[:2], args.chunk_size)  # load kernels before the baseline
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn(logits, args.chunk_size)
        torch.cuda.synchronize(device)
        del out
        return max(torch.cuda.max_memory_allocated(device) - before, 0)
    _reset_peak_resident()
    before = _resident_bytes()
    fn(logits, args.chunk_size)
    return max(_peak_resident_bytes() - before, 0)


def memory_in_child(variant: str, args: argparse.Namespace) -> int:
    cmd = [
        sys.executable, __file__, "--measure-memory", variant, "--tokens", str(args.tokens),
        "--vocab", str(args.vocab), "--chunk-size", str(args.chunk_size), "--dtype", args.dtype,
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="of the logits")
    parser.add_argument("--no-verl", action="store_true", help="leave verl's functions out")
    parser.add_argument("--measure-memory", choices=OURS + VERL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.measure_memory:
        print(json.dumps({"extra_bytes": measure_memory(args.measure_memory, args)}))
        return {}

    torch.set_num_threads(args.threads)
    N, V = args.tokens, args.vocab  # tokens, vocab
    dtype = DTYPES[args.dtype]
    fns = variants(OURS if args.no_verl else OURS + VERL)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {args.threads} thread(s)"
    print(
        f"torch {torch.__version__}, {where}, N={N}, V={V}, {args.dtype} logits "
        f"({N * V * dtype.itemsize / 2**20:.0f} MiB), chunk_size={args.chunk_size}, "
        f"best of {args.repeat}"
    )
    if cuda:  # in this process: the allocator's peak is per call, unlike the RSS
        memory = {v: measure_memory(v, args) for v in fns}
    else:
        memory = {v: memory_in_child(v, args) for v in fns}
    logits = make_logits(N, V, device=device, dtype=dtype)
    # Accuracy against a float64 reference on the first rows.
    rows = logits[: min(N, 256)]
    exact = naive_entropy(rows.double())
    errors = {
        v: float((fn(rows, args.chunk_size).double() - exact).abs().max()) for v, fn in fns.items()
    }
    times: dict[str, list[float]] = {v: [] for v in fns}
    for _ in range(args.repeat):  # interleaved, so load on the machine hits all alike
        for v, fn in fns.items():
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn(logits, args.chunk_size)
            if cuda:
                torch.cuda.synchronize(device)
            times[v].append(time.perf_counter() - start)
    best = {v: min(t) for v, t in times.items()}
    result: dict[str, float] = {}
    for v in fns:
        result[f"{v}_ms"] = best[v] * 1e3
        result[f"{v}_extra_mib"] = memory[v] / 2**20
        result[f"{v}_max_error"] = errors[v]
    print(f"{'':>12} {'time ms':>10} {'extra MiB':>10} {'max error vs fp64':>18}")
    for v in fns:
        print(
            f"{v:>12} {result[f'{v}_ms']:>10.1f} {result[f'{v}_extra_mib']:>10.1f} "
            f"{result[f'{v}_max_error']:>18.2e}"
        )
    for other in (v for v in fns if v != "chunked"):
        result[f"time_ratio_{other}"] = best["chunked"] / best[other]
        result[f"memory_ratio_{other}"] = memory["chunked"] / max(memory[other], 1)
        print(
            f"chunked / {other}: time ratio {result[f'time_ratio_{other}']:.2f}, "
            f"memory ratio {result[f'memory_ratio_{other}']:.4f}"
        )
    result["time_ratio"] = result["time_ratio_naive"]
    result["memory_ratio"] = result["memory_ratio_naive"]
    return result


if __name__ == "__main__":
    main()
