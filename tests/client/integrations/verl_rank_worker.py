"""One actor rank of a two-process gloo run of loss_mode "entmon" (launched by test_verl.py).

Usage: python -m tests.client.integrations.verl_rank_worker RANK WORLD INIT_FILE STEPS OUT_JSON
The Monitor comes from ENTMON_RUN / ENTMON_URL, created by the loss's first call as in a verl
worker. Each step is one actor update of two micro-batches, with a real all-reduce of the
gradient like FSDP's; OUT_JSON gets the control version each micro-batch's loss used.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config import ActorConfig, PolicyLossConfig

from client.integrations import verl as integration

B, T = 2, 32  # rows per micro-batch, tokens
STEP_S = 0.02


def main(argv: list[str]) -> None:
    rank, world, init_file, steps, out = argv
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=int(rank), world_size=int(world)
    )
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=B,
        policy_loss=PolicyLossConfig(loss_mode="entmon"),
    )
    # As verl's ppo_loss sets it: 2 ranks x 2 micro-batches of B rows per update.
    config.global_batch_info.update(dp_size=int(world), global_batch_size=2 * B * int(world))
    loss_fn = get_policy_loss_fn("entmon")
    g = torch.Generator().manual_seed(int(rank))
    used = []
    for _ in range(int(steps)):
        for _ in range(2):
            log_prob = (-3 * torch.rand(B, T, generator=g)).requires_grad_()
            old = log_prob.detach() + 0.1 * torch.randn(B, T, generator=g)
            adv = torch.randn(B, 1, generator=g).expand(B, T)
            mask = torch.ones(B, T, dtype=torch.bool)
            config.global_batch_info["batch_num_tokens"] = B * T * 2 * int(world)
            loss, metrics = loss_fn(old, log_prob, adv, mask, "token-mean", config)
            loss.backward()
            grad = log_prob.grad
            assert grad is not None
            dist.all_reduce(grad)  # the training's own collective keeps ranks in step
            used.append(metrics["actor/entmon_control_version"])
        time.sleep(STEP_S)
    mon = integration.detach()
    assert mon is not None
    mon.close(10)
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump({"rank": mon.rank, "world_size": mon.world_size, "used": used}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
