"""Our policy loss plus every step statistic versus verl's bare loss function.

Same tensors, same knobs, measured side by side in one run (interleaved, best of --repeat), for
each loss mode and each number of tokens N. "ours" is `policy_loss` + `StepAccumulator.add`
(entropy, covariance and log-ratio statistics, both histograms, the running top tokens) +
`pack` + `unpack` (the one host copy); "verl" is `compute_policy_loss_<mode>` alone. Forward
only: the backward pass is the same graph for both. Goal: ours <= 1.5x verl.

    python -m bench.bench_loss --repeat 25              # N = 16k .. 1M, a minute on 2 cores
    python -m bench.bench_loss --repeat 25 --threads 0  # torch's default threads
    python -m bench.bench_loss --sizes 4096 --repeat 1  # smoke

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
KNOBS = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "ppo_kl_coef": 1.0}


def make_batch(n_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A GRPO-like batch: per-sequence advantages, random response lengths, padding."""
    g = torch.Generator().manual_seed(seed)
    T = min(RESPONSE_LEN, n_tokens)  # positions
    B = max(n_tokens // T, 1)  # rows
    lengths = torch.randint(T // 4, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths).float()  # B, T
    log_prob = -torch.rand(B, T, generator=g) * 3
    return {
        "log_prob": log_prob.requires_grad_(),
        "old_log_prob": log_prob + 0.05 * torch.randn(B, T, generator=g),
        "advantages": torch.randn(B, 1, generator=g).expand(B, T).contiguous(),
        "response_mask": mask,
        "entropy": torch.rand(B, T, generator=g) * 4,
    }


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


def timed(fn: Callable[[], object], wall: list[float], cpu: list[float]) -> None:
    """Wall time and this process's CPU time: the machine may be shared, and with one torch
    thread CPU time is the work done, whatever else runs."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16384,65536,262144,1048576")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's default"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # verl's import-time notices are not ours to judge
    results: list[dict[str, float | int | str]] = []
    # With one thread, this process's CPU time is the work done whatever else the machine
    # runs; with several, it also counts threads spinning at each op's end, so wall time is
    # the fairer figure there (and the noisier one on a shared machine).
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), forward only, best "
        f"of {args.repeat}, ms: CPU time of this process, then wall time"
    )
    print(
        f"{'N':>9} {'mode':>9} {'verl':>8} {'ours':>8} {'ratio':>6}   "
        f"{'ours loss only':>14} {'ratio':>6}   {'wall: verl':>10} {'ours':>8} {'ratio':>6}"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        batch = make_batch(n)
        for mode in MODES:
            runs = {
                "verl": verl_loss(mode),
                "ours": ours(mode),
                "loss": ours(mode, statistics=False),
            }
            wall: dict[str, list[float]] = {k: [] for k in runs}
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            for fn in runs.values():
                fn(batch)  # warm up
            for _ in range(args.repeat):  # interleaved: load on the machine hits all alike
                for name, fn in runs.items():
                    timed(lambda f=fn, b=batch: f(b), wall[name], cpu[name])
            best = {k: min(v) * 1e3 for k, v in cpu.items()}
            row: dict[str, float | int | str] = {
                "n": n,
                "mode": mode,
                "verl_cpu_ms": best["verl"],
                "ours_cpu_ms": best["ours"],
                "cpu_ratio": best["ours"] / best["verl"],
                "loss_only_cpu_ms": best["loss"],
                "loss_only_ratio": best["loss"] / best["verl"],
                "verl_wall_ms": min(wall["verl"]) * 1e3,
                "ours_wall_ms": min(wall["ours"]) * 1e3,
                "wall_ratio": min(wall["ours"]) / min(wall["verl"]),
            }
            results.append(row)
            print(
                f"{n:>9} {mode:>9} {best['verl']:>8.2f} {best['ours']:>8.2f} "
                f"{row['cpu_ratio']:>6.2f}   {best['loss']:>14.2f} {row['loss_only_ratio']:>6.2f}"
                f"   {row['verl_wall_ms']:>10.2f} {row['ours_wall_ms']:>8.2f} "
                f"{row['wall_ratio']:>6.2f}"
            )
    return results


if __name__ == "__main__":
    main()
