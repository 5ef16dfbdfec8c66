"""Chunked token entropy versus the naive full-softmax formula, side by side in one run.

Naive: logsumexp(z) - sum(softmax(z) * z) over the whole [N, V] matrix at once (the formula of
verl's `entropy_from_logits`). Ours: `client.entropy.token_entropy`, the same quantity in row
chunks. Peak extra memory is measured in a fresh child process per variant (peak resident set
size while computing, minus the resident size with the logits already in memory); time is the
best of --repeat interleaved runs in this process. Goals: memory <= 1/8 of naive, time <= 1.1x.

    python bench/bench_entropy.py                        # N=8192, V=32768: ~1 GiB of logits
    python bench/bench_entropy.py --tokens 256 --vocab 1024 --repeat 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from client.entropy import DEFAULT_CHUNK_SIZE, token_entropy

VARIANTS = ("naive", "chunked")


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)


def run(variant: str, logits: torch.Tensor, chunk_size: int) -> torch.Tensor:
    if variant == "naive":
        return naive_entropy(logits)
    return token_entropy(logits, chunk_size=chunk_size)


def make_logits(tokens: int, vocab: int) -> torch.Tensor:
    # In place: a temporary here would set the process's peak before the measurement starts.
    return torch.randn(tokens, vocab, generator=torch.Generator().manual_seed(0)).mul_(3)


def _resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def measure_memory(variant: str, tokens: int, vocab: int, chunk_size: int) -> int:
    """In this (fresh) process: peak RSS during one call minus RSS before it, in bytes."""
    torch.set_num_threads(1)
    logits = make_logits(tokens, vocab)
    token_entropy(logits[:2], chunk_size=chunk_size)  # load kernels before the baseline
    naive_entropy(logits[:2])
    before = _resident_bytes()
    run(variant, logits, chunk_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(peak - before, 0)


def memory_in_child(variant: str, args: argparse.Namespace) -> int:
    cmd = [
        sys.executable, __file__, "--measure-memory", variant, "--tokens", str(args.tokens),
        "--vocab", str(args.vocab), "--chunk-size", str(args.chunk_size),
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
    parser.add_argument("--measure-memory", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        extra = measure_memory(args.measure_memory, args.tokens, args.vocab, args.chunk_size)
        print(json.dumps({"extra_bytes": extra}))
        return {}

    torch.set_num_threads(args.threads)
    N, V = args.tokens, args.vocab  # tokens, vocab
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), N={N}, V={V}, fp32 logits "
        f"({N * V * 4 / 2**20:.0f} MiB), chunk_size={args.chunk_size}, best of {args.repeat}"
    )
    memory = {v: memory_in_child(v, args) for v in VARIANTS}
    logits = make_logits(N, V)
    # Accuracy of both against a float64 reference on the first rows.
    rows = logits[: min(N, 256)]
    exact = naive_entropy(rows.double())
    errors = {
        v: float((run(v, rows, args.chunk_size).double() - exact).abs().max()) for v in VARIANTS
    }
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeat):  # interleaved, so load on the machine hits both alike
        for v in VARIANTS:
            start = time.perf_counter()
            run(v, logits, args.chunk_size)
            times[v].append(time.perf_counter() - start)
    best = {v: min(t) for v, t in times.items()}
    result = {
        "naive_ms": best["naive"] * 1e3,
        "chunked_ms": best["chunked"] * 1e3,
        "time_ratio": best["chunked"] / best["naive"],
        "naive_extra_mib": memory["naive"] / 2**20,
        "chunked_extra_mib": memory["chunked"] / 2**20,
        "memory_ratio": memory["chunked"] / max(memory["naive"], 1),
        "naive_max_error": errors["naive"],
        "chunked_max_error": errors["chunked"],
    }
    print(f"{'':>8} {'time ms':>10} {'extra MiB':>10} {'max error vs fp64':>18}")
    for v in VARIANTS:
        print(
            f"{v:>8} {result[f'{v}_ms']:>10.1f} {result[f'{v}_extra_mib']:>10.1f} "
            f"{result[f'{v}_max_error']:>18.2e}"
        )
    print(
        f"time ratio (chunked / naive) {result['time_ratio']:.2f}, "
        f"memory ratio {result['memory_ratio']:.4f}"
    )
    return result


if __name__ == "__main__":
    main()
