"""No host-device synchronisation on the training thread: `Monitor.policy_loss` (with the
backward pass) and `log()` for at least 200 steps under `torch.cuda.set_sync_debug_mode("error")`,
through the three loss modes.

Against a real `entmon serve` rather than an unreachable URL: the monitor swallows errors to
protect the training loop (a sync raising inside the statistics would only log and drop them),
so the proof needs every step's statistics to arrive, and the control changes that switch the
loss mode come from the service, at step boundaries, as in training.

The debug mode is process-wide, so the reporter thread runs under it too. It reads the step's
statistics by waiting on a CUDA event (not flagged: only stream and device synchronisation and
blocking copies are) from pinned memory. The scalars given to `log` are plain floats here: a
CUDA tensor given to `log` is read on the reporter thread, a synchronisation there that the
process-wide mode would flag although the training thread never waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import torch

from client import Monitor, histograms
from tests.client.conftest import FAST, stored_reports, stored_steps
from tests.client.test_cuda import CUDA, dyadic_batch, on
from tests.client.test_transport import put_control
from tests.conftest import ServerProcess

pytestmark = pytest.mark.cuda

MIN_STEPS = 200
DEADLINE_S = 120.0
RUN = "nosync"


def test_policy_loss_and_log_never_sync_the_host(
    shared_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="client")
    batches = [on(CUDA, dyadic_batch(seed, B=8, T=512)) for seed in range(4)]
    # The device's histogram tables as on a process's first step (other tests made them)
    histograms._tables.clear()
    histograms._shifts.clear()
    torch.cuda.synchronize()
    used: list[int] = []
    with Monitor(run=RUN, url=shared_server.url, config=FAST) as mon:

        def step() -> None:
            n = len(used)
            for b in (batches[n % 4], batches[(n + 1) % 4]):  # two micro-batches
                lp = b["log_prob"].detach().requires_grad_()
                loss, _ = mon.policy_loss(
                    lp, b["old_log_prob"], b["advantages"], b["response_mask"],
                    entropy=b["entropy"], token_ids=b["token_ids"],
                )  # fmt: skip
                loss.backward()
            used.append(mon.control.version)
            mon.log(n, reward=0.5, response_length=100.0)

        def steps_until(done: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + DEADLINE_S
            while not done():
                assert time.monotonic() < deadline, f"no {what} in {DEADLINE_S} s"
                step()

        torch.cuda.set_sync_debug_mode("error")
        try:
            steps_until(lambda: stored_reports(shared_server.url, RUN) > 0, "report stored")
            put_control(shared_server.url, RUN, 0, loss_mode="kl_cov")
            steps_until(lambda: mon.control.version == 1, "switch to KL-Cov")
            for _ in range(20):
                step()
            put_control(shared_server.url, RUN, 1, loss_mode="clip_cov", clip_cov_lb=0.5)
            steps_until(lambda: mon.control.version == 2, "switch to Clip-Cov")
            steps_until(lambda: len(used) >= MIN_STEPS and used.count(2) >= 20, "steps")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # nothing swallowed: no statistic skipped, no report lost, every step's statistics there
    assert [r.getMessage() for r in caplog.records if r.name.startswith("client")] == []
    assert mon.dropped == 0
    deadline = time.monotonic() + DEADLINE_S
    while stored_reports(shared_server.url, RUN) < len(used):
        assert time.monotonic() < deadline, "reports missing"
    stored = stored_steps(shared_server.url, RUN)
    assert [s["control_version"] for s in stored] == used
    assert sorted(set(used)) == [0, 1, 2]
    for s, version in zip(stored, used, strict=True):
        stats = s["stats"]
        assert isinstance(stats, dict)
        assert {"entropy", "cov_mean", "tokens", "policy_loss"} <= stats.keys()
        assert (stats.get("penalised", 0) > 0) == (version == 1)  # KL-Cov penalised
