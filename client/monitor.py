"""`Monitor`: the one object a training loop holds.

    mon = Monitor(run="qwen7b-klcov", url="http://127.0.0.1:8000")
    loss, info = mon.policy_loss(log_prob, old_log_prob, advantages, response_mask, entropy=h)
    mon.log(step, reward=r)  # closes the step: never blocks, never raises
    mon.close(timeout=5)

`policy_loss` computes the loss with the control of the current step and accumulates the step's
statistics over micro-batches on the device. `log` hands them to the reporter thread (which packs
and reads them: no host sync here), enqueues the report and then, at this step boundary and only
here, switches to a newer control if the monitor sent one. Each report names the control version
its step used.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from client.connection import MonitorConnection
from client.control import Control
from client.control_sync import ControlSync
from client.entropy_bonus import entropy_bonus
from client.handoff import FinishedStep
from client.log_once import LogOnce
from client.losses import DEFAULT_CLIP_RATIO_C, policy_token_losses, token_mean
from client.report import build_report
from client.reporter import Reporter, ReporterConfig
from client.spool import Spool, default_spool_dir, spool_path
from client.stats import StepAccumulator, WorkBuffers
from entmon.wire.ids import DRIVER_RANK, RUN_ID_PATTERN

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CLOSE_TIMEOUT_S = 5.0
URL_ENV = "ENTMON_URL"
TOKEN_ENV = "ENTMON_TOKEN"


def _dist_rank_and_size() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Monitor:
    """Streams the step statistics of one run (this rank's share) to an entmon service.

    Rank and world size default to torch.distributed's when it is initialised; the control is
    then synchronised across ranks (rank 0 decides), which makes creating the Monitor and each
    `log` call collective: do them on every rank, or pass `sync_control=False`.

    Reports the monitor cannot take now wait in `spool_dir` (default `$ENTMON_SPOOL_DIR` or
    ~/.entmon/spool), one file per run and rank, and are sent in order when it is back.

    `rank=DRIVER_RANK` makes this the run's driver: a process that trains nothing and reports
    whole-step values with `log(step, entropy=..., reward=...)` (verl's trainer). It takes no
    control (its reports name no control version) and is counted in no rank by the service,
    which lays its statistics over the ranks' of the same step.
    """

    def __init__(
        self,
        run: str,
        url: str | None = None,
        token: str | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        sync_control: bool = True,
        tokenizer: Any = None,
        config: ReporterConfig | None = None,
    ) -> None:
        if not re.fullmatch(RUN_ID_PATTERN, run):
            raise ValueError(
                f"run {run!r}: use 1 to 128 letters, digits, '.', '_' or '-' (the service's run id)"
            )
        dist_rank, dist_size = _dist_rank_and_size()
        self.run = run
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_size if world_size is None else world_size
        self.config = config or ReporterConfig()
        self.driver = self.rank == DRIVER_RANK
        self._log_once = LogOnce(enabled=self.rank == 0 or self.driver)
        connection = MonitorConnection(  # a bad URL raises here, before any collective
            url or os.environ.get(URL_ENV) or DEFAULT_URL,
            token if token is not None else os.environ.get(TOKEN_ENV),
            connect_timeout_s=self.config.connect_timeout_s,
            request_timeout_s=self.config.request_timeout_s,
        )
        distributed = sync_control and dist_size > 1 and not self.driver
        self._sync = ControlSync(distributed=distributed, log_once=self._log_once)
        self.control: Control = self._sync.current
        self._accumulator: StepAccumulator | None = None  # the step's, from its first loss
        self._work = WorkBuffers()  # the accumulators' CPU work buffers, one step after another
        self._device = torch.device("cpu")
        self._closed = False
        spool = None
        if self.config.spool:
            directory = Path(spool_dir) if spool_dir is not None else default_spool_dir()
            spool = Spool(
                spool_path(directory, run, self.rank),
                run=run,
                rank=self.rank,
                max_bytes=self.config.spool_max_bytes,
            )
        self._reporter = Reporter(
            connection=connection,
            run=run,
            spool=spool,
            config=self.config,
            on_control=self._sync.offer if self._sync.decides and not self.driver else None,
            tokenizer=tokenizer,
            log_once=self._log_once,
        )
        atexit.register(self.close)

    def policy_loss(
        self,
        log_prob: torch.Tensor,
        old_log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: torch.Tensor | None = None,
        token_ids: torch.Tensor | None = None,
        *,
        aggregate: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clip_ratio_c: float | None = DEFAULT_CLIP_RATIO_C,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The policy loss of one micro-batch under this step's control, and its statistics as
        device tensors (no host sync). The step's statistics accumulate until `log`.

        `aggregate` turns the per-token losses ([batch, response_len], 0 at masked tokens) into
        the returned loss, for a trainer's own aggregation (verl's `loss_agg_mode`); by default
        their token mean. The step's `loss` statistic is the token mean either way.
        `clip_ratio_c`: the vanilla loss's dual-clip bound (verl's `actor.clip_ratio_c`).
        A positive `entropy_coeff` knob adds `-entropy_coeff * mean entropy` to the returned loss
        (client/entropy_bonus.py): directly when `entropy` carries its gradient, else through a
        score-function estimate on `log_prob`, which this logs once.
        """
        control = self.control  # one control for the whole micro-batch
        per_token, stats = policy_token_losses(
            log_prob, old_log_prob, advantages, response_mask, control,
            clip_ratio_c=clip_ratio_c,
        )  # fmt: skip
        mean = token_mean(per_token, stats.tokens)
        loss = mean if aggregate is None else aggregate(per_token)
        if control.entropy_coeff:
            loss = loss + self._entropy_bonus(
                control.entropy_coeff, entropy, log_prob, response_mask, aggregate
            )
        try:
            if self._accumulator is None:
                self._accumulator = StepAccumulator(work=self._work)
                self._device = log_prob.device
            self._accumulator.add(
                log_prob,
                old_log_prob,
                advantages,
                response_mask,
                entropy=entropy,
                loss=mean,
                loss_stats=stats,
                token_ids=token_ids,
            )
        except Exception as e:  # statistics are never worth a crashed step
            self._accumulator = None
            self._log_once("accumulate", f"step statistics skipped: {e!r}", logging.ERROR)
        return loss, {k: v for k, v in stats._asdict().items() if isinstance(v, torch.Tensor)}

    def _entropy_bonus(
        self,
        coeff: float,
        entropy: torch.Tensor | None,
        log_prob: torch.Tensor,
        response_mask: torch.Tensor,
        aggregate: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        if entropy is None or not entropy.requires_grad:
            self._log_once(
                "entropy_bonus_estimate",
                f"entropy_coeff={coeff:g}: the entropy passed to policy_loss "
                f"{'is missing' if entropy is None else 'carries no gradient'}, so the bonus "
                "uses a score-function estimate on log_prob: right in expectation on a "
                "rollout's first, on-policy update. Pass entropy computed inside the graph for "
                "the exact term.",
                logging.WARNING,
            )
        try:
            return entropy_bonus(coeff, entropy, response_mask, log_prob, aggregate=aggregate)
        except Exception as e:  # e.g. log_prob without a gradient; never into the loop
            self._log_once("entropy_bonus", f"entropy bonus not applied: {e}", logging.ERROR)
            return torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)

    def log(self, step: int, **scalars: Any) -> None:
        """Close step `step`: report its statistics and these scalars (floats, ints or 0-d
        tensors; names outside the report schema go to `user`). Never blocks or raises."""
        if self._closed:
            return
        if self._reporter.forked:
            self._log_once(
                "forked",
                f"this Monitor was inherited by the forked process {os.getpid()} and reports "
                "nothing from it: create a Monitor in the child if it should report",
            )
            return
        try:
            finished = None
            if self._accumulator is not None:  # packed on the reporter thread
                finished = FinishedStep(self._accumulator, self._device)
                self._accumulator = None
            version = None if self.driver else self.control.version
            report = build_report(step, self.rank, self.world_size, version, scalars, finished)
            self._reporter.submit(report)
        except Exception as e:  # the training loop is sacred
            self._log_once("log", f"log(step={step!r}) not reported: {e!r}", logging.ERROR)
        try:
            self.control = self._sync.at_step_boundary(step)
        except Exception as e:
            self._log_once("control_sync", f"control not updated: {e!r}", logging.ERROR)

    @property
    def dropped(self) -> int:
        """Reports lost for good so far (they are also reported as `client_drops`)."""
        return self._reporter.dropped_total

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Send what is queued for at most `timeout` seconds (what is left goes to the spool) and
        stop the reporter thread. Also runs at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._reporter.forked:  # the parent's broadcasts and reports are not ours to finish
            return
        deadline = time.monotonic() + timeout
        try:
            self._sync.close(timeout)
        except Exception as e:
            self._log_once("control_sync", f"control sync not closed cleanly: {e!r}")
        self._reporter.close(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
