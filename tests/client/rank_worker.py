"""One rank of a two-process run (launched by tests/client/test_transport.py with gloo and by
tests/client/test_cuda_nccl.py with NCCL).

Usage: python -m tests.client.rank_worker RANK WORLD INIT_FILE URL RUN STEPS OUT_JSON [BACKEND]
Logs STEPS steps with a real all-reduce in each, like a data-parallel trainer, and writes the
control version each step used to OUT_JSON. BACKEND "nccl" (default "gloo") puts the rank on
GPU RANK, all-reduces there and computes each step's loss and statistics there.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.distributed as dist

from client import Monitor, ReporterConfig
from tests.client.conftest import micro_batch

STEP_S = float(os.environ.get("RANK_WORKER_STEP_S", "0.02"))  # slower: the service keeps up


def main(argv: list[str]) -> None:
    rank, world, init_file, url, run, steps, out, *rest = argv
    backend = rest[0] if rest else "gloo"
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(rank))
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"file://{init_file}", rank=int(rank), world_size=int(world)
    )
    mon = Monitor(run=run, url=url, config=ReporterConfig(poll_interval_s=0.2))
    used = []
    batch = {k: v.to(device) for k, v in micro_batch(int(rank)).items()}
    for step in range(int(steps)):
        grad = torch.ones(4, device=device)
        dist.all_reduce(grad)  # the training's own collective keeps ranks in step
        used.append(mon.control.version)
        if backend == "nccl":
            mon.policy_loss(**batch)
        mon.log(step, entropy=1.0, reward=0.1 * int(rank))
        time.sleep(STEP_S)
    mon.close(10)
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump({"rank": mon.rank, "world_size": mon.world_size, "used": used}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
