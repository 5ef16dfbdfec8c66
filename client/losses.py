"""Policy losses: vanilla PPO (with clip-higher), Clip-Cov and KL-Cov, with verl's semantics.

Inputs are verl's: [batch, response_len] tensors of current and old log-probs, advantages and a
0/1 response mask. Aggregation is verl's "token-mean", sum(loss * mask) / max(sum(mask), 1), so an
all-masked batch gives a finite 0 where verl gives NaN. Each function returns the loss and a
`LossStats` of 0-d device tensors: nothing here reads a device value (KL-Cov on CPU reads one
boolean, where there is no device to wait for), so the monitor can copy every statistic of a
step to the host in one transfer (client/stats.py).

Where these equal verl's bit for bit and where not (covariance in float32, ties on CUDA,
all-masked batches, ratio 0, Clip-Cov's random stream) is in client/MATH.md, "Parity with
verl". Like verl, Clip-Cov and KL-Cov do not clamp the log-ratio: a huge ratio overflows to inf
and the loss (NaN at a detached token, as verl's `loss * corr`) and statistics report it
instead of hiding it. Vanilla PPO is verl's `vanilla` mode: log-ratio clamped to [-20, 20] and
dual-clip with `clip_ratio_c` (verl's default 3.0) for negative advantages.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from client.batch import Batch, masked_batch
from client.control import Control
from client.covariance import Centred, Scope
from client.selection import Selection, clip_cov_selection, kl_cov_selection
from entmon.wire.knobs import (
    DEFAULT_CLIP_COV_LB,
    DEFAULT_CLIP_COV_RATIO,
    DEFAULT_CLIP_COV_UB,
    DEFAULT_CLIP_RATIO_HIGH,
    DEFAULT_CLIP_RATIO_LOW,
    DEFAULT_KL_COV_RATIO,
    DEFAULT_PPO_KL_COEF,
)

DEFAULT_CLIP_RATIO_C = 3.0  # verl's dual-clip bound for negative advantages
LOG_RATIO_CLAMP = 20.0  # verl's vanilla loss clamps the log-ratio to [-20, 20]


class LossStats(NamedTuple):
    """What one loss call saw, as 0-d device tensors (counts int64, means fp32).

    `detached` is non-zero only for Clip-Cov, `penalised` and `penalised_abs_log_ratio_mean`
    only for KL-Cov. `ppo_clip_frac` is the fraction of tokens where the PPO clip binds
    (L2 > L1); KL-Cov applies no clip and reports what the clip would have done. `budget` is n
    or K (divide by `tokens` for the effective ratio, inflated by the floor of 1 on small
    batches). `batch` (the masked inputs) and `centred` (the covariance and means the selection
    used; None for vanilla or a given selection) let the step statistics reuse the work. Pass
    them only along with the same tensors the loss saw.
    """

    loss_mode: str
    scope: str
    tokens: Tensor
    candidates: Tensor
    detached: Tensor
    penalised: Tensor
    budget: Tensor
    ppo_clip_frac: Tensor
    log_ratio_mean: Tensor
    abs_log_ratio_mean: Tensor
    penalised_abs_log_ratio_mean: Tensor
    batch: Batch | None = None
    centred: Centred | None = None


class _Terms(NamedTuple):
    batch: Batch
    log_ratio: Tensor  # B, T; 0 at masked tokens
    pg1: Tensor  # -A * ratio; 0 at masked tokens
    pg2: Tensor  # -A * clamp(ratio, 1 - eps_low, 1 + eps_high); 0 at masked tokens
    # B, T float32, 1 where pg2 > pg1, else 0 (never at masked tokens, where both are 0): a
    # comparison written as floats is several times cheaper than one written as bool.
    clipped: Tensor

    def clipped_mask(self) -> Tensor:
        return self.clipped.bool()  # B, T


# Below 2**24, a float32 sum of 0/1 values is the exact count, in any order.
_EXACT_FLOAT_COUNT = 2**24


def _terms(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    *,
    clamp_log_ratio: bool = False,
) -> _Terms:
    batch = masked_batch(log_prob, old_log_prob, advantages, response_mask)
    log_ratio = batch.log_prob - batch.old_log_prob
    if clamp_log_ratio:
        log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    neg_adv = -batch.advantages
    pg1 = neg_adv * ratio
    pg2 = neg_adv * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    with torch.no_grad():
        clipped = torch.gt(pg2, pg1, out=torch.empty_like(pg1, dtype=torch.float32))
    return _Terms(batch, log_ratio, pg1, pg2, clipped)


def token_mean(per_token: Tensor, tokens: Tensor) -> Tensor:
    """The loss of per-token losses: their mean over the valid tokens."""
    # Per-token losses are exactly 0 at masked tokens (zeroed inputs), so a plain sum is the
    # masked sum; an all-masked batch gives 0 / 1 = 0.
    return per_token.sum() / tokens.clamp(min=1)


@torch.no_grad()
def _stats(
    mode: str,
    scope: Scope,
    t: _Terms,
    *,
    selection: Selection | None = None,
    centred: Centred | None = None,
    abs_log_ratio: Tensor | None = None,
) -> LossStats:
    device = t.batch.n.device
    zero = torch.zeros((), dtype=torch.int64, device=device)
    denom = t.batch.n.clamp(min=1)
    log_ratio = t.log_ratio.detach()  # 0 at masked tokens
    if abs_log_ratio is None:
        abs_log_ratio = log_ratio.abs()
    picked = zero
    if selection is not None:
        count = selection.count
        picked = torch.count_nonzero(selection.picked) if count is None else count
    if mode == "kl_cov" and selection is not None:
        pen_abs = torch.where(selection.picked, abs_log_ratio, 0.0).sum() / picked.clamp(min=1)
    else:
        pen_abs = torch.zeros((), device=device)
    if t.clipped.numel() < _EXACT_FLOAT_COUNT:
        clipped = t.clipped.sum()
    else:
        clipped = torch.count_nonzero(t.clipped)
    candidates = zero
    if mode == "clip_cov" and selection is not None:
        candidates = torch.count_nonzero(selection.candidates)
    return LossStats(
        loss_mode=mode,
        scope=scope,
        tokens=t.batch.n,
        candidates=candidates,
        detached=picked if mode == "clip_cov" else zero,
        penalised=picked if mode == "kl_cov" else zero,
        budget=zero if selection is None else selection.budget,
        ppo_clip_frac=clipped / denom,
        log_ratio_mean=log_ratio.sum() / denom,
        abs_log_ratio_mean=abs_log_ratio.sum() / denom,
        penalised_abs_log_ratio_mean=pen_abs,
        batch=t.batch,
        centred=centred,
    )


def _token_losses(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    c: Control,
    *,
    clip_ratio_c: float | None,
    generator: torch.Generator | None,
    scope: Scope,
    selection: Selection | None,
) -> tuple[Tensor, LossStats]:
    """The per-token losses (B, T; exactly 0 at masked tokens) of a validated control."""
    vanilla = c.loss_mode == "vanilla"
    t = _terms(
        log_prob, old_log_prob, advantages, response_mask, c.clip_ratio_low, c.clip_ratio_high,
        clamp_log_ratio=vanilla,
    )  # fmt: skip
    if vanilla:
        loss = torch.maximum(t.pg1, t.pg2)
        if clip_ratio_c is not None:
            # verl: where(A < 0, min(-A * c, loss), loss). For A >= 0, |A| * c >= 0 >= loss,
            # so min(|A| * c, loss) is the same value (and gradient) without a `where`.
            loss = torch.minimum(t.batch.advantages.abs().mul_(clip_ratio_c), loss)
        return loss, _stats("vanilla", scope, t)
    centred = None
    if c.loss_mode == "clip_cov":
        if selection is None:
            selection, centred = clip_cov_selection(
                t.batch, t.clipped_mask(),
                clip_cov_ratio=c.clip_cov_ratio, clip_cov_lb=c.clip_cov_lb,
                clip_cov_ub=c.clip_cov_ub, generator=generator, scope=scope,
            )  # fmt: skip
        # verl's `loss * corr` (corr 0 at the picked tokens, else 1), not a `where`: an
        # overflowed loss (inf) at a picked token gives NaN as in verl instead of a hidden 0.
        loss = torch.maximum(t.pg1, t.pg2)
        loss = loss * (~selection.picked).view(torch.uint8).to(loss.dtype)
        abs_lr = None
    else:
        if selection is None:
            selection, centred = kl_cov_selection(t.batch, kl_cov_ratio=c.kl_cov_ratio, scope=scope)
        abs_lr = t.log_ratio.abs()  # also the statistics' |log-ratio|
        penalty = c.ppo_kl_coef * abs_lr
        loss = torch.where(selection.picked, t.pg1 + penalty, t.pg1)
        abs_lr = abs_lr.detach()
    stats = _stats(
        c.loss_mode, scope, t, selection=selection, centred=centred, abs_log_ratio=abs_lr
    )
    return loss, stats


def _loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    c: Control,
    *,
    clip_ratio_c: float | None,
    generator: torch.Generator | None,
    scope: Scope,
    selection: Selection | None,
) -> tuple[Tensor, LossStats]:
    """The token-mean loss of a validated control."""
    per_token, stats = _token_losses(
        log_prob, old_log_prob, advantages, response_mask, c,
        clip_ratio_c=clip_ratio_c, generator=generator, scope=scope, selection=selection,
    )  # fmt: skip
    return token_mean(per_token, stats.tokens), stats


def _check_clip_ratio_c(clip_ratio_c: float | None) -> None:
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:  # verl asserts the same
        raise ValueError(f"clip_ratio_c (the dual-clip bound) must be > 1, got {clip_ratio_c}")


def vanilla_ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_ratio_low: float = DEFAULT_CLIP_RATIO_LOW,
    clip_ratio_high: float = DEFAULT_CLIP_RATIO_HIGH,
    clip_ratio_c: float | None = DEFAULT_CLIP_RATIO_C,
) -> tuple[Tensor, LossStats]:
    """PPO clipped loss with clip-higher (separate eps_low / eps_high), verl's `vanilla`.

    `clip_ratio_c` is the dual-clip bound for negative advantages (None: no dual clip).
    """
    _check_clip_ratio_c(clip_ratio_c)
    c = Control(loss_mode="vanilla", clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high)
    return _loss(
        log_prob, old_log_prob, advantages, response_mask, c,
        clip_ratio_c=clip_ratio_c, generator=None, scope="micro_batch", selection=None,
    )  # fmt: skip


def clip_cov_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_cov_ratio: float = DEFAULT_CLIP_COV_RATIO,
    clip_cov_lb: float = DEFAULT_CLIP_COV_LB,
    clip_cov_ub: float = DEFAULT_CLIP_COV_UB,
    clip_ratio_low: float = DEFAULT_CLIP_RATIO_LOW,
    clip_ratio_high: float = DEFAULT_CLIP_RATIO_HIGH,
    generator: torch.Generator | None = None,
    scope: Scope = "micro_batch",
    selection: Selection | None = None,
) -> tuple[Tensor, LossStats]:
    """Clip-Cov (verl `clip_cov`): the PPO-clipped loss with a few random high-covariance
    tokens detached (zero loss, zero gradient; they still count in the token mean).

    Candidates are valid, not PPO-clipped tokens with clip_cov_lb < cov < clip_cov_ub; the budget
    is max(floor(clip_cov_ratio * valid tokens), 1). Pass `selection` (from `select_tokens`) to
    use a selection made on a larger batch instead of selecting here.
    """
    c = Control(
        loss_mode="clip_cov", clip_cov_ratio=clip_cov_ratio, clip_cov_lb=clip_cov_lb,
        clip_cov_ub=clip_cov_ub, clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high,
    )  # fmt: skip
    return _loss(
        log_prob, old_log_prob, advantages, response_mask, c,
        clip_ratio_c=None, generator=generator, scope=scope, selection=selection,
    )  # fmt: skip


def kl_cov_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    kl_cov_ratio: float = DEFAULT_KL_COV_RATIO,
    ppo_kl_coef: float = DEFAULT_PPO_KL_COEF,
    clip_ratio_low: float = DEFAULT_CLIP_RATIO_LOW,
    clip_ratio_high: float = DEFAULT_CLIP_RATIO_HIGH,
    scope: Scope = "micro_batch",
    selection: Selection | None = None,
) -> tuple[Tensor, LossStats]:
    """KL-Cov (verl `kl_cov`): the UNCLIPPED loss -A * ratio, plus ppo_kl_coef * |log-ratio|
    on the K = max(floor(kl_cov_ratio * valid tokens), 1) tokens of largest covariance.

    The clip ratios only feed the `ppo_clip_frac` statistic. On-policy (log_prob equal to
    old_log_prob) the penalty is 0 and this is the plain unclipped policy gradient.
    """
    c = Control(
        loss_mode="kl_cov", kl_cov_ratio=kl_cov_ratio, ppo_kl_coef=ppo_kl_coef,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high,
    )  # fmt: skip
    return _loss(
        log_prob, old_log_prob, advantages, response_mask, c,
        clip_ratio_c=None, generator=None, scope=scope, selection=selection,
    )  # fmt: skip


def policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    control: Control,
    *,
    generator: torch.Generator | None = None,
    scope: Scope = "micro_batch",
    selection: Selection | None = None,
    clip_ratio_c: float | None = DEFAULT_CLIP_RATIO_C,
) -> tuple[Tensor, LossStats]:
    """The loss `control.loss_mode` names, with the control's knobs (verl's semantics). The
    vanilla loss dual-clips negative advantages at `clip_ratio_c` (verl's `actor.clip_ratio_c`,
    default 3.0; None: no dual clip); verl's Clip-Cov and KL-Cov have no dual clip, nor do ours."""
    _check_clip_ratio_c(clip_ratio_c)
    return _loss(
        log_prob, old_log_prob, advantages, response_mask, control,
        clip_ratio_c=clip_ratio_c, generator=generator, scope=scope, selection=selection,
    )  # fmt: skip


def policy_token_losses(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    control: Control,
    *,
    generator: torch.Generator | None = None,
    scope: Scope = "micro_batch",
    selection: Selection | None = None,
    clip_ratio_c: float | None = DEFAULT_CLIP_RATIO_C,
) -> tuple[Tensor, LossStats]:
    """The per-token losses of `policy_loss` ([batch, response_len], exactly 0 at masked
    tokens), for callers that aggregate them their own way (verl's `loss_agg_mode`, importance
    weights); `policy_loss` is their token mean."""
    _check_clip_ratio_c(clip_ratio_c)
    return _token_losses(
        log_prob, old_log_prob, advantages, response_mask, control,
        clip_ratio_c=clip_ratio_c, generator=generator, scope=scope, selection=selection,
    )  # fmt: skip


@torch.no_grad()
def select_tokens(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    control: Control,
    *,
    generator: torch.Generator | None = None,
    scope: Scope = "global",
) -> Selection | None:
    """Select once on a whole mini-batch (current log-probs from a no-grad forward), then pass
    `selection.rows(micro_batch_rows)` to each micro-batch's loss: the selection then no longer
    depends on the micro-batch split (and, with scope "global", not on the rank split either).
    None for the vanilla loss, which selects nothing."""
    if control.loss_mode == "vanilla":
        return None
    t = _terms(
        log_prob, old_log_prob, advantages, response_mask,
        control.clip_ratio_low, control.clip_ratio_high,
    )  # fmt: skip
    if control.loss_mode == "kl_cov":
        return kl_cov_selection(t.batch, kl_cov_ratio=control.kl_cov_ratio, scope=scope)[0]
    return clip_cov_selection(
        t.batch, t.clipped_mask(),
        clip_cov_ratio=control.clip_cov_ratio, clip_cov_lb=control.clip_cov_lb,
        clip_cov_ub=control.clip_cov_ub, generator=generator, scope=scope,
    )[0]  # fmt: skip
