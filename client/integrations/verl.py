"""verl integration: the policy-loss mode "entmon", Clip-Cov / KL-Cov under the run's live control.

    actor_rollout_ref.actor.policy_loss.loss_mode=entmon

Importing this module registers the mode with verl's `register_policy_loss` and wraps verl's
`Tracking` so that verl's trainer process reports each step's entropy, reward and response
length, which the loss never sees (client.integrations.verl_driver); nothing else. verl 0.9.1
imports it in each of its processes through the `verl.plugins` entry point that entmon declares
(verl/__init__.py loads that group at `import verl`), or through
`VERL_USE_EXTERNAL_MODULES=client.integrations.verl`.

The loss is `client.losses.policy_token_losses` under the Monitor's current control (loss_mode
and every knob: verl's own config objects are frozen and say nothing of them), aggregated with
verl's own `agg_loss` for the config's `loss_agg_mode` and global batch, after verl's rollout
importance weights, exactly as verl's built-in `clip_cov` / `kl_cov` / `vanilla` do; the vanilla
loss dual-clips at the config's `clip_ratio_c`, as verl's does.

Entropy bonus: verl applies its own `actor.entropy_coeff` in the actor, outside the policy loss,
from its static config; entmon cannot change it. entmon's live `entropy_coeff` knob (the one the
thermostat can drive) is applied inside this loss instead, but verl hands a policy loss no
entropy, so it goes through the score-function estimate on log_prob (client/entropy_bonus.py),
which is right in expectation on each rollout's first update and noisier than verl's exact term.
Keep verl's own entropy_coeff at 0 when entmon's drives the bonus, or the two add up.

The Monitor: one per actor process, from `attach(monitor)` or, at the first call, created from
ENTMON_RUN (with ENTMON_URL and ENTMON_TOKEN, which `Monitor` reads itself). verl gives a
policy loss no step hook and no step number, so the loss finds the step boundaries itself: verl's
engine passes every row of an actor update's mini-batch through it, `global_batch_size //
dp_size` rows on each rank (`config.global_batch_info`), and the loss closes an entmon step
(`Monitor.log`) after every `updates_per_step` updates. With updates_per_step = train_batch_size
// ppo_mini_batch_size * ppo_epochs and first_step the first global step, entmon's steps are
verl's. Any monitoring failure stays inside the Monitor; a missing Monitor is a configuration
error, raised at the first call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from client.control import Control
from client.errors import EntmonError
from client.integrations import verl_driver
from client.integrations.verl_env import (
    DEFAULT_FIRST_STEP,
    DEFAULT_UPDATES_PER_STEP,
    FIRST_STEP_ENV,
    LOSS_MODE,
    RUN_ENV,
    UPDATES_PER_STEP_ENV,
    parse_int,
)
from client.log_once import LogOnce
from client.losses import DEFAULT_CLIP_RATIO_C
from client.monitor import Monitor

try:
    from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss
except ImportError as e:  # pragma: no cover - the extra is installed in development
    raise ImportError('client.integrations.verl needs verl: pip install "entmon[verl]"') from e

__all__ = ["LOSS_MODE", "attach", "compute_policy_loss_entmon", "detach"]

verl_driver.install()  # verl's trainer process reports each step's entropy and reward

# Strategies where every rank of the actor's process group computes the loss of every update,
# so the Monitor's control sync (collective on that group) is safe. Elsewhere (Megatron with
# pipeline stages) some ranks never call the loss and a collective there would hang.
SYNCED_STRATEGIES = ("fsdp", "fsdp2")


_log_once_on_rank0: LogOnce | None = None  # made at first use: verl imports this module early


def _log_once(kind: str, message: str) -> None:
    global _log_once_on_rank0
    if _log_once_on_rank0 is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        _log_once_on_rank0 = LogOnce(enabled=rank == 0)
    _log_once_on_rank0(kind, message)


class _Binding:
    """This process's Monitor and where the loss stands in verl's update loop."""

    def __init__(self, monitor: Monitor, *, updates_per_step: int | None, first_step: int) -> None:
        if updates_per_step is not None and updates_per_step < 1:
            raise ValueError(f"updates_per_step must be >= 1 or None, got {updates_per_step}")
        if first_step < 0:
            raise ValueError(f"first_step must be >= 0, got {first_step}")
        self.monitor = monitor
        self.updates_per_step = updates_per_step
        self.next_step = first_step
        self.rows = 0  # rows of the actor update in progress, on this rank
        self.updates = 0  # updates done since the last step closed

    def after_micro_batch(self, rows: int, batch_info: Mapping[str, Any]) -> None:
        """Close the step when this micro-batch ended its `updates_per_step`-th update."""
        if self.updates_per_step is None:
            return
        dp_size, global_batch_size = batch_info.get("dp_size"), batch_info.get("global_batch_size")
        if not dp_size or not global_batch_size:
            _log_once(
                "verl_no_batch_info",
                f"loss_mode={LOSS_MODE}: verl passed no global batch info, so the loss cannot tell "
                "its updates apart and reports no step; call attach(monitor, "
                "updates_per_step=None) and monitor.log(step) yourself",
            )
            return
        self.rows += rows
        if self.rows < int(global_batch_size) // int(dp_size):
            return
        self.rows = 0
        self.updates += 1
        if self.updates < self.updates_per_step:
            return
        self.updates = 0
        self.monitor.log(self.next_step)  # never blocks, never raises
        self.next_step += 1


_binding: _Binding | None = None


def attach(
    monitor: Monitor,
    *,
    updates_per_step: int | None = DEFAULT_UPDATES_PER_STEP,
    first_step: int = DEFAULT_FIRST_STEP,
) -> None:
    """Use `monitor` for loss_mode=entmon in this process.

    The loss calls `monitor.log(step)` after every `updates_per_step` actor updates it sees,
    for step = first_step, first_step + 1, ...; None: never (you call `monitor.log`).
    """
    global _binding
    _binding = _Binding(monitor, updates_per_step=updates_per_step, first_step=first_step)


def detach() -> Monitor | None:
    """Stop using this process's Monitor and return it (not closed), or None if there was none."""
    global _binding
    binding, _binding = _binding, None
    return None if binding is None else binding.monitor


def _env_int(name: str, default: int, minimum: int) -> int:
    return parse_int(name, os.environ.get(name), default, minimum)


def _from_environment(config: Any) -> _Binding:
    run = os.environ.get(RUN_ENV)
    if not run:
        raise EntmonError(
            f"loss_mode={LOSS_MODE} takes its knobs from an entmon Monitor in each actor process: "
            f"set {RUN_ENV} (and ENTMON_URL, ENTMON_TOKEN) in the workers' environment, e.g. "
            f"+ray_kwargs.ray_init.runtime_env.env_vars.{RUN_ENV}=my-run, or call "
            "client.integrations.verl.attach(monitor) in that process"
        )
    updates_per_step = _env_int(UPDATES_PER_STEP_ENV, DEFAULT_UPDATES_PER_STEP, minimum=1)
    first_step = _env_int(FIRST_STEP_ENV, DEFAULT_FIRST_STEP, minimum=0)
    strategy = getattr(config, "strategy", None)
    sync = strategy in SYNCED_STRATEGIES
    if not sync:
        _log_once(
            "verl_strategy",
            f"loss_mode={LOSS_MODE} with actor strategy {strategy!r}: control changes are not "
            "synchronised across ranks (each rank applies them at its own next step), and ranks "
            "holding the same data report it twice",
        )
    try:
        monitor = Monitor(run, sync_control=sync)
    except Exception as e:
        raise EntmonError(f"cannot start the entmon Monitor for run {run!r}: {e}") from e
    return _Binding(monitor, updates_per_step=updates_per_step, first_step=first_step)


def _clip_ratio_c(config: Any) -> float:
    """verl's `actor.clip_ratio_c`, the dual-clip bound of its vanilla loss (verl 0.9.1 default
    3.0), which entmon's vanilla loss applies with verl's formula; Clip-Cov and KL-Cov have no
    dual clip in verl, nor in entmon. A value verl would reject fails the same way, loudly."""
    value = getattr(config, "clip_ratio_c", None)
    return DEFAULT_CLIP_RATIO_C if value is None else float(value)


def _verl_metrics(control: Control, stats: Mapping[str, Tensor]) -> dict[str, Any]:
    """verl's metric names with their meaning under verl's built-in mode of the same name, so its
    dashboards keep working; 0-d device tensors (verl reads them) and the control version."""
    metrics: dict[str, Any] = {"actor/entmon_control_version": control.version}
    if control.loss_mode == "kl_cov":
        metrics["actor/ppo_kl"] = stats["abs_log_ratio_mean"]
        return metrics
    metrics["actor/ppo_kl"] = -stats["log_ratio_mean"]
    if control.loss_mode == "clip_cov":  # verl's clip_cov reports the detached fraction here
        metrics["actor/pg_clipfrac"] = stats["detached"] / stats["tokens"].clamp(min=1)
    else:
        metrics["actor/pg_clipfrac"] = stats["ppo_clip_frac"]
    return metrics


@register_policy_loss(LOSS_MODE)
def compute_policy_loss_entmon(
    old_log_prob: Tensor,
    log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """verl's policy-loss contract: [batch, response_len] tensors in, (loss, metrics) out."""
    global _binding
    if _binding is None:
        _binding = _from_environment(config)
    binding = _binding
    batch_info: Mapping[str, Any] = getattr(config, "global_batch_info", None) or {}

    def aggregate(per_token: Tensor) -> Tensor:  # verl's own aggregation, as its modes do
        if rollout_is_weights is not None:
            per_token = per_token * rollout_is_weights
        loss: Tensor = agg_loss(
            loss_mat=per_token, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **batch_info
        )
        return loss

    control = binding.monitor.control  # the one this call uses; log() below may switch it
    loss, stats = binding.monitor.policy_loss(
        log_prob, old_log_prob, advantages, response_mask, aggregate=aggregate,
        clip_ratio_c=_clip_ratio_c(config),
    )  # fmt: skip
    metrics = _verl_metrics(control, stats)
    try:
        binding.after_micro_batch(log_prob.shape[0], batch_info)
    except Exception as e:  # step bookkeeping is monitoring: never worth a crashed update
        _log_once("verl_step", f"loss_mode={LOSS_MODE}: step not closed: {e!r}")
    return loss, metrics
