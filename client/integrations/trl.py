"""TRL: `EntmonGRPOTrainer`, a `trl.GRPOTrainer` whose policy loss is entmon's.

    from client.integrations.trl import EntmonGRPOTrainer
    trainer = EntmonGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(num_iterations=2, ...),
                                train_dataset=..., run="qwen-grpo", monitor_url="http://127.0.0.1:8000")
    trainer.train()  # one report per optimizer step; the live control applies from the next step

Each micro-batch's per-token losses are `Monitor.policy_loss`'s on the per-token log-probs and
entropies TRL already computes (since 1.15 TRL never builds the full logits: its fused LM head
returns both), so the control, Clip-Cov / KL-Cov and the statistics are exactly entmon's
(client/losses.py), with the PPO clip ratios of the run's control, not `epsilon` /
`epsilon_high`. They are aggregated as TRL 1.16 aggregates its `loss_type` ("dapo", "bnpo",
"grpo", "dr_grpo"; `aggregation`), scaled for gradient accumulation as TRL scales it. TRL's KL
to a reference (`beta`, added per token before that aggregation) and the MoE router loss are
added as TRL adds them; options that change the policy loss in ways entmon does not implement
are refused at construction (`TrlConfigError`).

Overridden, and nothing else: `_compute_loss` (the loss), `_generate_and_score_completions` (only
to read the reward TRL just computed) and `train` (closes a Monitor the trainer created). These
are TRL internals, hence the pinned range `SUPPORTED_TRL`; another version logs a warning.
Warnings go to the client's logger ("client"), each kind once, on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from client.errors import EntmonError
from client.log_once import LogOnce
from client.losses import policy_token_losses
from client.monitor import Monitor

try:
    import trl
    from packaging.version import Version
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer
except ImportError as e:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        f'client.integrations.trl needs TRL and transformers: pip install "entmon[trl]" ({e})'
    ) from e

__all__ = [
    "SUPPORTED_TRL",
    "TRL_ENTROPY",
    "EntmonGRPOTrainer",
    "TrlConfigError",
    "aggregation",
    "kl_to_reference",
    "unsupported_options",
]

SUPPORTED_TRL = (Version("1.16"), Version("1.17"))  # [low, high): pyproject's `trl` extra
# TRL's clipped-ratio objectives whose aggregation `aggregation` reproduces.
# ("luspo" is PPO-clipped too: with per-token importance weights, which entmon requires, it is
# TRL's clipped loss with a sum over each completion's tokens, then a mean over completions.)
_PPO_CLIP_LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo", "luspo")
# The user scalar carrying TRL's `entropy` log entry: the mean of the micro-batches' token means.
TRL_ENTROPY = "trl_entropy"
# Inputs TRL's forward takes from the batch besides ids and masks (multimodal models).
_MODEL_INPUTS = (
    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
    "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
)  # fmt: skip


class TrlConfigError(EntmonError, ValueError):
    """The GRPOConfig asks for something entmon's loss does not implement; the message says
    which options and what to set instead."""


def unsupported_options(args: Any) -> list[str]:
    """Every GRPOConfig option that would change the policy loss in a way entmon's loss does
    not implement, with what to set instead; empty when the config is usable."""
    problems = []
    if args.loss_type not in _PPO_CLIP_LOSS_TYPES:
        problems.append(
            f"loss_type={args.loss_type!r}: entmon's loss is the PPO-clipped one (set one of "
            f"{', '.join(_PPO_CLIP_LOSS_TYPES)})"
        )
    if args.importance_sampling_level != "token":
        problems.append("importance_sampling_level: entmon's loss is per token (set 'token')")
    if args.delta is not None:
        problems.append("delta: two-sided clipping is not in entmon's loss (set None)")
    if args.top_entropy_quantile < 1.0:
        problems.append("top_entropy_quantile: entropy masking is not in entmon's loss (set 1.0)")
    if args.off_policy_mask_threshold is not None:
        problems.append("off_policy_mask_threshold: not in entmon's loss (set None)")
    if args.entropy_coef != 0.0 or args.use_adaptive_entropy:
        problems.append(
            "entropy_coef / use_adaptive_entropy: set 0.0 / False and use entmon's live "
            "entropy_coeff knob (or its thermostat) for the entropy bonus"
        )
    if args.use_vllm and args.vllm_importance_sampling_correction:
        problems.append(
            "vllm_importance_sampling_correction: per-token IS weights are not in entmon's loss "
            "(set False)"
        )
    return problems


def aggregation(
    loss_type: str,
    mask: Tensor,
    *,
    accumulation: float,
    max_completion_length: int | None,
    window_tokens: Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    """TRL 1.16's aggregation for `loss_type`: per-token losses [B, T], 0 at masked tokens ->
    the micro-batch's loss, scaled for gradient accumulation as TRL scales it.

    "bnpo": token mean of the micro-batch; "grpo": mean over completions of each one's token
    mean; "dr_grpo": sum / (B * max_completion_length); each divided by `accumulation` (TRL's
    `current_gradient_accumulation_steps` in training, 1 in evaluation). "dapo": sum /
    `window_tokens`, TRL's estimate of one process's valid tokens in the whole accumulation
    window (it already spans the window: no further division). "luspo": mean over completions
    of each one's token sum, divided by `accumulation`.
    """
    B = mask.shape[0]  # completions in the micro-batch
    if loss_type == "dapo":
        if window_tokens is None:
            raise ValueError('loss_type "dapo" needs window_tokens')
        return lambda per_token: per_token.sum() / window_tokens
    if loss_type == "bnpo":
        tokens = mask.sum().clamp(min=1)
        return lambda per_token: per_token.sum() / tokens / accumulation
    if loss_type == "grpo":
        lengths = mask.sum(-1).clamp(min=1)  # B
        return lambda per_token: (per_token.sum(-1) / lengths).mean() / accumulation
    if loss_type == "dr_grpo":  # a constant normaliser: no length bias
        if max_completion_length is None:
            raise ValueError('loss_type "dr_grpo" needs max_completion_length')
        constant = B * max_completion_length
        return lambda per_token: per_token.sum() / constant / accumulation
    if loss_type == "luspo":  # each completion weighted by its length
        return lambda per_token: per_token.sum(-1).mean() / accumulation
    raise ValueError(f"no aggregation for loss_type {loss_type!r}")


def kl_to_reference(
    log_prob: Tensor,
    ref_log_prob: Tensor,
    old_log_prob: Tensor,
    mask: Tensor,
    *,
    bias_corrected: bool,
    aggregate: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """TRL's `beta` term: the k3 estimate exp(r - l) - (r - l) - 1 of KL(pi || ref), optionally
    weighted by the ratio pi / pi_old (TRL's `use_bias_correction_kl`), aggregated by
    `aggregate` (the policy loss's, as TRL adds it per token before aggregating; default the
    token mean over the micro-batch)."""
    valid = mask > 0  # B, T
    d = torch.where(valid, ref_log_prob - log_prob, 0.0)  # B, T; 0 at padding
    kl = torch.exp(d) - d - 1  # B, T; exactly 0 at padding
    if bias_corrected:
        kl = kl * torch.exp(torch.where(valid, log_prob - old_log_prob, 0.0))
    if aggregate is None:
        return kl.sum() / valid.sum().clamp(min=1)
    return aggregate(kl)


class _StepReporter(TrainerCallback):
    """Closes each optimizer step in the monitor (the control switches there)."""

    def __init__(self, trainer: EntmonGRPOTrainer) -> None:
        self._trainer = trainer

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._trainer.report_step(state.global_step)


class EntmonGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with entmon's policy loss under the run's live control.

    Give `monitor` (yours to close), or `run` with optional `monitor_url` / `monitor_token` to
    have the trainer create one (default URL and token from ENTMON_URL / ENTMON_TOKEN; closed when
    `train` returns or raises). Each optimizer step (`state.global_step`) is one report with the
    mean reward TRL computed for the rollout the step trained on. Clip-Cov zeroes the loss and
    gradient of the selected tokens; KL-Cov penalises its selection with ppo_kl_coef * |log-ratio|,
    which is 0 on-policy: use `num_iterations > 1` (a warning is logged otherwise).
    """

    def __init__(
        self,
        *args: Any,
        monitor: Monitor | None = None,
        run: str | None = None,
        monitor_url: str | None = None,
        monitor_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        if (monitor is None) == (run is None):
            raise TypeError("EntmonGRPOTrainer needs exactly one of monitor= and run=")
        super().__init__(*args, **kwargs)
        problems = unsupported_options(self.args)
        if problems:
            raise TrlConfigError("GRPOConfig options entmon cannot honour: " + "; ".join(problems))
        self._owns_monitor = monitor is None
        if monitor is None:  # now, when torch.distributed (its rank and world size) is up
            assert run is not None  # checked above
            monitor = Monitor(run, monitor_url, monitor_token, tokenizer=self.processing_class)
        self.monitor = monitor
        self._log_once = LogOnce(enabled=self.monitor.rank == 0)
        low, high = SUPPORTED_TRL
        if not low <= Version(trl.__version__) < high:
            self._log_once(
                "trl_version",
                f"TRL {trl.__version__} is outside the tested range [{low}, {high}): the loss "
                "override uses GRPOTrainer internals that may have changed",
            )
        self._reward: float | None = None  # of the rollout the current step trains on
        # Each training micro-batch's token-mean entropy, as TRL logs it (device tensors).
        self._entropy_means: list[Tensor] = []
        self.add_callback(_StepReporter(self))

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._owns_monitor:
                self.monitor.close()

    def report_step(self, step: int) -> None:
        """End optimizer step `step` in the monitor (called on every rank; never raises)."""
        self.monitor.log(step, **self._step_scalars())

    def _step_scalars(self) -> dict[str, Any]:
        """The step's user scalars, and a fresh start for the next step's: the reward, and
        TRL's `entropy` log entry (the mean of the micro-batches' token means; entmon's own
        `entropy` statistic is the token mean over the step). A 0-d device tensor: the
        reporter thread reads it, not the training loop."""
        scalars: dict[str, Any] = {} if self._reward is None else {"reward": self._reward}
        if self._entropy_means:
            scalars[TRL_ENTROPY] = torch.stack(self._entropy_means).double().mean()
            self._entropy_means = []
        return scalars

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        if self._training():  # `get`: reading the defaultdict would add an empty metric
            rewards = self._metrics["train"].get("reward")
            self._reward = rewards[-1] if rewards else None
        return output

    def _training(self) -> bool:
        return self.model is not None and self.model.training  # TRL's train / eval switch

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Tensor:
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        B, T = completion_ids.shape  # completions in the micro-batch, completion tokens
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)  # B, P + T
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)  # B, P + T
        tool_mask = inputs.get("tool_mask")  # B, T: 0 at tool output inside a completion
        mask = completion_mask if tool_mask is None else completion_mask * tool_mask  # B, T
        log_prob, entropy, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, T,
            compute_entropy=True, compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in _MODEL_INPUTS},
        )  # fmt: skip
        # TRL leaves out the old log-probs when the step is on-policy (they equal the current ones).
        old = inputs.get("old_per_token_logps")
        old_log_prob = log_prob.detach() if old is None else old  # B, T
        advantages = inputs["advantages"]  # B: one per completion (B, T from subclasses)
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        advantages = advantages.expand(B, T)  # the completion's advantage on each of its tokens
        training = self._training()
        aggregate = self._aggregation(inputs, mask, training)
        control = self.monitor.control
        if training:
            if old is None and control.loss_mode == "kl_cov":
                self._log_once(
                    "kl_cov_on_policy",
                    "KL-Cov on-policy: the log-ratio is 0, so its penalty is 0 and the loss is "
                    "the unclipped policy gradient; set num_iterations > 1",
                )
            loss, _ = self.monitor.policy_loss(
                log_prob, old_log_prob, advantages, mask, entropy=entropy,
                token_ids=completion_ids, aggregate=aggregate,
            )  # fmt: skip
            # TRL's `entropy`: this micro-batch's masked mean, computed as TRL computes it.
            with torch.no_grad():
                count = mask.sum().float().clamp(min=1.0)
                self._entropy_means.append((entropy.detach() * mask).sum() / count)
        else:  # evaluation: the same loss, kept out of the training step's statistics
            per_token, _ = policy_token_losses(log_prob, old_log_prob, advantages, mask, control)
            loss = aggregate(per_token)
        if self.beta != 0.0:
            loss = loss + self.beta * kl_to_reference(
                log_prob, inputs["ref_per_token_logps"], old_log_prob, mask,
                bias_corrected=cast(GRPOConfig, self.args).use_bias_correction_kl,
                aggregate=aggregate,
            )  # fmt: skip
        if self.aux_loss_enabled:  # HF's own scaling for accumulation is off in GRPOTrainer
            accumulation = self.current_gradient_accumulation_steps if training else 1
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
        return loss

    def _aggregation(
        self, inputs: dict[str, Any], mask: Tensor, training: bool
    ) -> Callable[[Tensor], Tensor]:
        """`aggregation` with this micro-batch's normalisers, taken as TRL's `_compute_loss`
        takes them."""
        args = cast(GRPOConfig, self.args)
        accumulation = self.current_gradient_accumulation_steps if training else 1
        window_tokens = None
        if args.loss_type == "dapo":
            # `num_items_in_batch`: valid tokens of the generation batch, summed over processes;
            # a generation batch spans steps_per_generation micro-batches.
            generation_tokens = inputs["num_items_in_batch"].clamp(min=1.0)
            window_tokens = generation_tokens / self.accelerator.num_processes
            if training:  # in evaluation the batch is neither split nor accumulated
                window_tokens = window_tokens * accumulation / args.steps_per_generation
        return aggregation(
            args.loss_type, mask, accumulation=accumulation,
            max_completion_length=self.max_completion_length, window_tokens=window_tokens,
        )  # fmt: skip
