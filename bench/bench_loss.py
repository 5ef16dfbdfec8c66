"""Our policy loss plus every step statistic versus verl's bare loss function.

Same tensors, same knobs, measured side by side in one run (interleaved, best of --repeat), for
each loss mode and each number of tokens N. "ours" is `policy_loss` + `StepAccumulator.add`
(entropy, covariance and log-ratio statistics, both histograms, the running top tokens) +
`pack` + `unpack` (the one host copy); "verl" is `compute_policy_loss_<mode>` alone. Forward
only: the backward pass is the same graph for both. Goal: ours <= 1.5x verl.

    python -m bench.bench_loss --repeat 25              # N = 16k .. 1M, a minute on 2 cores
    python -m bench.bench_loss --repeat 25 --threads 0  # torch's default threads
    python -m bench.bench_loss --sizes 4096 --repeat 1  # smoke
    python -m bench.bench_loss --device cuda --dtypes fp32,bf16 --repeat 25  # on a GPU

On CUDA each run ends with `torch.cuda.synchronize()` and the table is wall time (CPU time
says nothing there); "ours" already waits for its statistics' copy to the host in `unpack`.

As a module it measures this checkout's `client`; as a script (`python bench/bench_loss.py`)
Python finds `client` through the installed package, which may be another checkout.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch

from client.control import Control
from client.losses import policy_loss
from client.stats import StepAccumulator

RESPONSE_LEN = 1024
MODES = ("vanilla", "clip_cov", "kl_cov")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
KNOBS = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "ppo_kl_coef": 1.0}


def make_batch(
    n_tokens: int,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A GRPO-like batch: per-sequence advantages, random response lengths, padding; the
    float inputs in `dtype` (the mask stays float32), on `device`."""
    g = torch.Generator().manual_seed(seed)
    T = min(RESPONSE_LEN, n_tokens)  # positions
    B = max(n_tokens // T, 1)  # rows
    lengths = torch.randint(T // 4, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths).float()  # B, T
    log_prob = -torch.rand(B, T, generator=g) * 3
    floats = {
        "log_prob": log_prob,
        "old_log_prob": log_prob + 0.05 * torch.randn(B, T, generator=g),
        "advantages": torch.randn(B, 1, generator=g).expand(B, T).contiguous(),
        "entropy": torch.rand(B, T, generator=g) * 4,
    }
    batch = {k: v.to(device=device, dtype=dtype) for k, v in floats.items()}
    batch["log_prob"].requires_grad_()
    batch["response_mask"] = mask.to(device)
    return batch


def verl_loss(mode: str) -> Callable[[dict[str, torch.Tensor]], object]:
    from verl.trainer.ppo import core_algos
    from verl.workers.config import ActorConfig, PolicyLossConfig

    control = Control(loss_mode=mode, **KNOBS)
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=control.clip_ratio_low,
        clip_ratio_high=control.clip_ratio_high,
        policy_loss=PolicyLossConfig(
            loss_mode=mode,
            clip_cov_ratio=control.clip_cov_ratio,
            clip_cov_lb=control.clip_cov_lb,
            clip_cov_ub=control.clip_cov_ub,
            kl_cov_ratio=control.kl_cov_ratio,
            ppo_kl_coef=control.ppo_kl_coef,
        ),
    )
    fn = getattr(core_algos, f"compute_policy_loss_{mode}")

    def run(b: dict[str, torch.Tensor]) -> object:
        return fn(
            b["old_log_prob"], b["log_prob"], b["advantages"], b["response_mask"], config=config
        )

    return run


def ours(mode: str, *, statistics: bool = True) -> Callable[[dict[str, torch.Tensor]], object]:
    control = Control(loss_mode=mode, **KNOBS)
    acc = StepAccumulator()

    def run(b: dict[str, torch.Tensor]) -> object:
        lp, old, adv, mask = b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"]
        loss, stats = policy_loss(lp, old, adv, mask, control)
        if not statistics:
            return loss
        acc.add(lp, old, adv, mask, entropy=b["entropy"], loss=loss, loss_stats=stats)
        return acc.pack().unpack()

    return run


def timed(
    fn: Callable[[], object], wall: list[float], cpu: list[float], *, cuda: bool = False
) -> None:
    """Wall time and this process's CPU time: the machine may be shared, and with one torch
    thread CPU time is the work done, whatever else runs. On CUDA the device's work is waited
    for on both sides of the call, so wall time covers it."""
    if cuda:
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16384,65536,262144,1048576")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's default"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtypes", default="fp32", help=f"of the float inputs: {sorted(DTYPES)}")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtypes = args.dtypes.split(",")
    if unknown := sorted(set(dtypes) - DTYPES.keys()):
        parser.error(f"--dtypes: unknown {unknown}, choose from {sorted(DTYPES)}")
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # verl's import-time notices are not ours to judge
    results: list[dict[str, float | int | str]] = []
    # With one thread, this process's CPU time is the work done whatever else the machine
    # runs; with several, it also counts threads spinning at each op's end, so wall time is
    # the fairer figure there (and the noisier one on a shared machine).
    where = f"{torch.cuda.get_device_name(device)}" if cuda else "CPU"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} thread(s), forward "
        f"only, best of {args.repeat}, ms: "
        + ("wall time, the device waited for" if cuda else "CPU time of this process, then wall")
    )
    header = f"{'N':>9} {'dtype':>5} {'mode':>9} {'verl':>8} {'ours':>8} {'ratio':>6}   "
    header += f"{'ours loss only':>14} {'ratio':>6}"
    print(header if cuda else f"{header}   {'wall: verl':>10} {'ours':>8} {'ratio':>6}")
    sizes = [int(s) for s in args.sizes.split(",")]
    for n, dtype in ((n, dtype) for dtype in dtypes for n in sizes):
        batch = make_batch(n, device=device, dtype=DTYPES[dtype])
        for mode in MODES:
            runs = {
                "verl": verl_loss(mode),
                "ours": ours(mode),
                "loss": ours(mode, statistics=False),
            }
            wall: dict[str, list[float]] = {k: [] for k in runs}
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            for fn in runs.values():
                fn(batch)  # warm up (on CUDA: kernels loaded, allocator's pool filled)
            for _ in range(args.repeat):  # interleaved: load on the machine hits all alike
                for name, fn in runs.items():
                    timed(lambda f=fn, b=batch: f(b), wall[name], cpu[name], cuda=cuda)
            best = {k: min(v) * 1e3 for k, v in cpu.items()}
            best_wall = {k: min(v) * 1e3 for k, v in wall.items()}
            row: dict[str, float | int | str] = {
                "n": n,
                "dtype": dtype,
                "device": str(device),
                "mode": mode,
                "verl_cpu_ms": best["verl"],
                "ours_cpu_ms": best["ours"],
                "cpu_ratio": best["ours"] / best["verl"],
                "loss_only_cpu_ms": best["loss"],
                "loss_only_ratio": best["loss"] / best["verl"],
                "verl_wall_ms": best_wall["verl"],
                "ours_wall_ms": best_wall["ours"],
                "wall_ratio": best_wall["ours"] / best_wall["verl"],
                "loss_only_wall_ms": best_wall["loss"],
                "loss_only_wall_ratio": best_wall["loss"] / best_wall["verl"],
            }
            results.append(row)
            first = best_wall if cuda else best  # on CUDA only wall time means anything
            line = (
                f"{n:>9} {dtype:>5} {mode:>9} {first['verl']:>8.2f} {first['ours']:>8.2f} "
                f"{first['ours'] / first['verl']:>6.2f}   {first['loss']:>14.2f} "
                f"{first['loss'] / first['verl']:>6.2f}"
            )
            if not cuda:
                line += (
                    f"   {row['verl_wall_ms']:>10.2f} {row['ours_wall_ms']:>8.2f} "
                    f"{row['wall_ratio']:>6.2f}"
                )
            print(line)
    return results


if __name__ == "__main__":
    main()
