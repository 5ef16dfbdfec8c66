"""What GRPO group health adds to the step statistics: `StepAccumulator` add + pack + unpack
with it, and with it replaced by an empty table (what `unpack` reads), side by side.

Same batch (bench_loss's GRPO-like batch, with an entropy), interleaved, best of --repeat, CPU
time of this process with one torch thread.

    python -m bench.bench_group_health --repeat 25
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.bench_loss import make_batch
from client.stats import _GROUPS, StepAccumulator, WorkBuffers
from entmon.wire.layouts import LENGTH_LAYOUT, bucket_count


def _empty_groups(acc: StepAccumulator, batch: Any, lengths: Tensor, entropy: Any) -> None:
    """The group-health step left out: the empty table `unpack` reads, made once a step."""
    if acc._groups is None:
        shape = (len(_GROUPS), bucket_count(LENGTH_LAYOUT))
        acc._groups = torch.zeros(shape, dtype=torch.float64, device=lengths.device)


def _best_ms(run: Callable[[dict[str, Tensor], WorkBuffers], None], b: dict[str, Tensor],
             work: WorkBuffers, best: float) -> float:  # fmt: skip
    start = time.process_time()
    run(b, work)
    return min(best, (time.process_time() - start) * 1e3)


def _step(b: dict[str, Tensor], work: WorkBuffers) -> None:
    acc = StepAccumulator(work=work)
    acc.add(
        b["log_prob"], b["old_log_prob"], b["advantages"], b["response_mask"],
        entropy=b["entropy"],
    )  # fmt: skip
    acc.pack().unpack()


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16384,65536,262144,1048576")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    real = StepAccumulator._add_groups
    rows = []
    print("N tokens   with (ms)   without (ms)   added (ms)   ratio")
    for n in (int(s) for s in args.sizes.split(",")):
        b = make_batch(n)
        work = WorkBuffers()
        with_ms = without_ms = float("inf")
        try:
            for _ in range(args.repeat):
                StepAccumulator._add_groups = real  # type: ignore[method-assign]
                with_ms = _best_ms(_step, b, work, with_ms)
                StepAccumulator._add_groups = _empty_groups  # type: ignore[method-assign,assignment]
                without_ms = _best_ms(_step, b, work, without_ms)
        finally:
            StepAccumulator._add_groups = real  # type: ignore[method-assign]
        row = {"n": n, "with_ms": with_ms, "without_ms": without_ms, "ratio": with_ms / without_ms}
        rows.append(row)
        print(f"{n:>8} {with_ms:>11.2f} {without_ms:>14.2f} {with_ms - without_ms:>12.2f} "
              f"{with_ms / without_ms:>7.3f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
