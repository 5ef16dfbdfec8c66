"""What logging one step costs the training thread: entmon's `Monitor.log` beside `wandb.log`
(WANDB_MODE=offline) and TensorBoard's `SummaryWriter`, in one run on this machine.

Every step computes one micro-batch's policy loss (4 x 256 tokens, not timed), then logs one
realistic report: about 30 scalars, two 64-bucket histograms, 8 top tokens (timed).
- entmon: `Monitor.policy_loss` computes that loss and accumulates the step's statistics; the
  timed `log(step, reward=..., + user scalars)` hands them to the reporter thread and enqueues
  the report, while that thread packs, encodes and sends to a real `entmon serve` (embedded
  Redis) on this machine.
- wandb: `wandb.log` of 30 scalars, two `wandb.Histogram(np_histogram=...)` from precomputed
  counts, and the 8 top tokens' covariances as scalars (its cheapest form of this report).
- TensorBoard: 30 `add_scalar`, two `add_histogram_raw` with precomputed counts (cheaper than
  `add_histogram` on raw values) and 8 `add_scalar` for the top tokens.
Competitors get precomputed histograms, so the comparison favours them. The "floor" row times a
call that only copies a dict: the noise of this machine and of the harness. "entmon-down" is
entmon with the monitor unreachable (nothing listens on its port): every report goes to the spool.
"entmon-silent" is entmon with a monitor that accepts connections and never answers; it also
prints how long close(2) took and whether a reporter thread was left.

    .venv/bin/python bench/bench_log.py [--steps 2000] [--rounds 3] [--only entmon,wandb,...]
    (wandb and tensorboard: pip install "entmon[bench]")
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.realistic import STATS, USER, realistic_report
from client import Control, Monitor
from client.losses import policy_loss
from monitor.embedded_redis import EmbeddedRedis, free_port
from tests.client.conftest import SilentServer
from tests.conftest import ServerProcess

WARMUP = 50
B, T = 4, 256  # sequences, response tokens per micro-batch
SCALARS = {**{k: float(v) for k, v in STATS.items()}, **USER}  # 30 scalars


def quantiles_us(latencies: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(latencies, n=100)
    return 1e6 * statistics.median(latencies), 1e6 * q[98], 1e6 * max(latencies)


def timed(steps: int, before: Callable[[int], None], call: Callable[[int], None]) -> list[float]:
    latencies = []
    for step in range(steps + WARMUP):
        before(step)
        started = time.perf_counter()
        call(step)
        elapsed = time.perf_counter() - started
        if step >= WARMUP:
            latencies.append(elapsed)
    return latencies


def micro_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, 64, generator=g)
    log_prob = torch.randn(B, T, generator=g).mul(0.3).sub(1.0)
    probs = logits.softmax(-1)
    return {
        "log_prob": log_prob,
        "old_log_prob": log_prob + torch.randn(B, T, generator=g).mul(0.01),
        "advantages": torch.randn(B, 1, generator=g).expand(B, T).contiguous(),
        "response_mask": torch.ones(B, T),
        "entropy": -(probs * probs.log()).sum(-1),  # B, T
        "token_ids": torch.randint(0, 50_000, (B, T), generator=g),
    }


def training_work() -> Callable[[int], None]:
    """What every logger's loop does between two log calls: one micro-batch's policy loss."""
    mb = micro_batch()
    inputs = {k: v for k, v in mb.items() if k not in ("entropy", "token_ids")}
    control = Control()

    def work(step: int) -> None:
        policy_loss(**inputs, control=control)

    return work


def bench_entmon(steps: int, workdir: Path) -> list[float]:
    mb = micro_batch()
    user = dict(USER)
    with EmbeddedRedis(workdir / "redis") as redis:
        env = {"ENTMON_REDIS_URL": redis.url, "ENTMON_DATA_DIR": str(workdir)}
        server = ServerProcess(env).start()
        try:
            mon = Monitor(run="bench-log", url=server.url, spool_dir=workdir / "spool")

            def work(step: int) -> None:  # the same loss, plus the step statistics: not timed
                mon.policy_loss(**mb)

            latencies = timed(steps, work, lambda s: mon.log(s, reward=0.7, **user))
            mon.close(30)
            if mon.dropped:
                raise RuntimeError(f"entmon dropped {mon.dropped} reports")
        finally:
            server.stop()
    return latencies


def bench_entmon_down(steps: int, workdir: Path) -> list[float]:
    """The monitor unreachable for the whole run: reports go to the disk spool."""
    mb = micro_batch()
    user = dict(USER)
    mon = Monitor(run="bench-down", url=f"http://127.0.0.1:{free_port()}", spool_dir=workdir)

    def work(step: int) -> None:
        mon.policy_loss(**mb)

    latencies = timed(steps, work, lambda s: mon.log(s, reward=0.7, **user))
    mon.close(30)
    if mon.dropped:
        raise RuntimeError(f"entmon dropped {mon.dropped} reports")
    return latencies


def _histograms() -> tuple[list[np.ndarray], list[np.ndarray]]:
    report = realistic_report(0)
    counts = [np.asarray(h["counts"][:64], dtype=np.float64) for h in report["histograms"].values()]
    edges = [np.linspace(-5.0, 5.0, 65) for _ in counts]
    return counts, edges


def bench_wandb(steps: int, workdir: Path) -> list[float]:
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    import wandb

    counts, edges = _histograms()
    top = {f"top_cov/{i}": 5.0 - 0.3 * i for i in range(8)}
    run = wandb.init(project="entmon-bench", dir=str(workdir), mode="offline")

    def log(step: int) -> None:
        hists = {
            f"hist/{name}": wandb.Histogram(np_histogram=(c, e))
            for name, c, e in zip(("entropy", "covariance"), counts, edges, strict=True)
        }
        wandb.log({**SCALARS, **hists, **top}, step=step)

    latencies = timed(steps, training_work(), log)
    run.finish()
    return latencies


def bench_tensorboard(steps: int, workdir: Path) -> list[float]:
    from torch.utils.tensorboard import SummaryWriter

    counts, edges = _histograms()
    writer = SummaryWriter(log_dir=str(workdir / "tb"))

    def log(step: int) -> None:
        for name, value in SCALARS.items():
            writer.add_scalar(name, value, step)
        for name, c, e in zip(("entropy", "covariance"), counts, edges, strict=True):
            writer.add_histogram_raw(
                f"hist/{name}", min=float(e[0]), max=float(e[-1]), num=int(c.sum()),
                sum=0.0, sum_squares=float(c.sum()), bucket_limits=e[1:].tolist(),
                bucket_counts=c.tolist(), global_step=step,
            )  # fmt: skip
        for i in range(8):
            writer.add_scalar(f"top_cov/{i}", 5.0 - 0.3 * i, step)

    latencies = timed(steps, training_work(), log)
    writer.close()
    return latencies


def bench_entmon_silent(steps: int, workdir: Path) -> list[float]:
    """A monitor that accepts connections and never answers (a hung service): log() must not
    notice; close(2) must return in about 2 s with the reporter thread ended (its duration is
    printed here: tests/client/test_transport.py asserts only that it returns and what it left)."""
    mb = micro_batch()
    user = dict(USER)
    server = SilentServer()
    try:
        mon = Monitor(run="bench-silent", url=server.url, spool_dir=workdir)

        def work(step: int) -> None:
            mon.policy_loss(**mb)

        latencies = timed(steps, work, lambda s: mon.log(s, reward=0.7, **user))
        started = time.monotonic()
        mon.close(2)
        closed_in = time.monotonic() - started
        alive = [t for t in threading.enumerate() if t.name == "entmon-reporter" and t.is_alive()]
        print(
            f"entmon-silent: close(2) returned in {closed_in:.2f} s, reporter threads left: "
            f"{len(alive)}, dropped: {mon.dropped}",
            file=sys.stderr,
        )
    finally:
        server.close()
    return latencies


def bench_floor(steps: int, workdir: Path) -> list[float]:
    """The harness alone (a call that builds a small dict): this machine's noise floor."""
    return timed(steps, training_work(), lambda s: dict(SCALARS))


BENCHES = {
    "floor": bench_floor,
    "entmon": bench_entmon,
    "entmon-down": bench_entmon_down,
    "entmon-silent": bench_entmon_silent,
    "wandb": bench_wandb,
    "tensorboard": bench_tensorboard,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the loggers take turns")
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.only.split(",")
    pooled: dict[str, list[float]] = {name: [] for name in names}
    medians: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):  # taking turns spreads this machine's load drift over all
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                latencies = BENCHES[name](args.steps, Path(tmp))
            pooled[name] += latencies
            medians[name].append(1e6 * statistics.median(latencies))
    print(
        f"log() latency on the training thread: {args.rounds} rounds of {args.steps} steps "
        f"(after {WARMUP} warm-up), all samples pooled"
    )
    header = f"{'logger':<12} {'median us':>10} {'p99 us':>10} {'max us':>10} {'> 1 ms':>7}"
    print(f"{header} {'median / entmon':>16}  round medians us")
    base = statistics.median(pooled["entmon"]) * 1e6 if "entmon" in pooled else float("nan")
    for name in names:
        median, p99, worst = quantiles_us(pooled[name])
        rounds = " ".join(f"{m:.1f}" for m in medians[name])
        slow = sum(1 for x in pooled[name] if x > 1e-3)
        row = f"{name:<12} {median:>10.1f} {p99:>10.1f} {worst:>10.1f} {slow:>7}"
        print(f"{row} {median / base:>15.1f}x  {rounds}")


if __name__ == "__main__":
    main()
