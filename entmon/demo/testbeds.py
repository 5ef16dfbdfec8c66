"""The two trainers behind `entmon demo` and bench/reproduce.py, by name.

- `toy` (entmon.demo.toy): crack secret codes from scratch; every answer token is a decision.
- `lm` (entmon.demo.testbed): a tiny language model pretrained on noisy written-out arithmetic,
  then trained by GRPO; most answer tokens are determined, a few are forks (the paper's regime).

Both trainers have the same shape: `train(cfg, mon, on_step=...)` returning `StepRecord`s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NAMES = ("toy", "lm")
DEFAULT = "toy"


@dataclass(frozen=True)
class Testbed:
    name: str
    config: Callable[..., Any]  # the run's config dataclass (ToyConfig or LMConfig)
    train: Callable[..., Any]
    clip_cov_ratio: float  # the loss knobs scaled to the testbed's mini-batches
    kl_cov_ratio: float
    ratio_note: str  # why they are scaled, for reports and the demo's control reason
    tokenizer: Callable[[], Any]
    reward_label: str
    prepare: Callable[[Any], None]  # done once before runs start (the LM's pretraining)

    def describe(self, cfg: Any) -> str:
        if self.name == "toy":
            return (
                f"toy: {cfg.pool} prompts with secret {cfg.code_len}-digit codes, "
                f"{cfg.prompts_per_step} prompts x {cfg.group_size} answers = "
                f"{cfg.tokens_per_step} tokens/step, {cfg.mini_batches} updates/rollout, "
                f"lr {cfg.lr}"
            )
        pre = cfg.pretrain
        clip = f"gradient norm clipped at {cfg.max_grad_norm}" if cfg.max_grad_norm else "unclipped"
        evals = f"every {cfg.eval_every} steps" if cfg.eval_every else "never"
        return (
            f"lm: {pre.model.n_layers}-layer d={pre.model.d_model} transformer pretrained "
            f"{pre.steps} steps x {pre.batch} noisy demonstrations (P(+) {pre.plus_bias}, aimed "
            f"{pre.aim}, errors {pre.error_rate}); RL on {cfg.pool} prompts, "
            f"{cfg.prompts_per_step} prompts x {cfg.group_size} answers x "
            f"{cfg.response_length} tokens = {cfg.tokens_per_step} tokens/step, "
            f"{cfg.mini_batches} updates/rollout, lr {cfg.lr}, {clip}; exact expected reward on "
            f"the pool {evals}"
        )


def _pretrained(pretrain: Any, cfg: Any) -> None:
    pretrain.load_pretrained(cfg.pretrain, cfg.cache_dir)


def load(name: str) -> Testbed:
    """The testbed called `name` (imports torch)."""
    if name == "toy":
        from entmon.demo import toy

        return Testbed(
            name="toy",
            config=toy.ToyConfig,
            train=toy.train,
            clip_cov_ratio=toy.TOY_CLIP_COV_RATIO,
            kl_cov_ratio=toy.TOY_KL_COV_RATIO,
            ratio_note="x100 for the toy's 512-token mini-batches, where the paper's own 2e-4 / "
            "2e-3 would select 1 token",
            tokenizer=toy.DigitTokenizer,
            reward_label="reward (digits in place / 4)",
            prepare=lambda cfg: None,
        )
    if name == "lm":
        from entmon.demo.testbed import grpo, pretrain, task

        return Testbed(
            name="lm",
            config=grpo.LMConfig,
            train=grpo.train,
            clip_cov_ratio=grpo.LM_CLIP_COV_RATIO,
            kl_cov_ratio=grpo.LM_KL_COV_RATIO,
            ratio_note="x100 as in the toy, for the LM testbed's 1,536-token mini-batches, where "
            "the paper's own 2e-4 / 2e-3 would select 1 and 3 tokens",
            tokenizer=task.TraceTokenizer,
            reward_label="reward (valid trace reaching the target)",
            prepare=lambda cfg: _pretrained(pretrain, cfg),
        )
    raise ValueError(f"unknown testbed {name!r}: choose one of {', '.join(NAMES)}")
