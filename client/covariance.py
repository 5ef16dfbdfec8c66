"""Per-token covariance between log-probability and advantage (ALGORITHM.md section 2).

cov_i = (A_i - mean A) * (logp_i - mean logp) over the valid (response-mask) tokens of the
selection unit. The log-probabilities are detached: covariance only drives token selection and
statistics, never the gradient. Means are masked means; an all-masked input gives zero means.
Whatever sits at masked positions (padding, even NaN) never reaches a mean or a covariance.

The selection unit is the `scope`: "micro_batch" (the tensors passed in, as the reference) or
"global" (means and count all-reduced over the default process group when one is initialised).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from client.batch import Batch, masked_batch, zero_masked

# The covariance is computed in float32 whatever the inputs' dtype (bf16, fp16, fp64): the
# precision the bounds of Clip-Cov and the ranking of KL-Cov are compared in, and that of the
# statistics. verl computes it in the inputs' dtype; with float32 inputs (verl's log-probs and
# advantages are float32) the two agree. Half precision would round covariances near
# clip_cov_lb / clip_cov_ub across the bound (bf16 keeps 8 bits: 5.0 and 4.98 are one value)
# and tie most of KL-Cov's ranking; float64 inputs are rounded to float32 here (a covariance
# within a float32 ulp of a bound, or of another, may then be ordered otherwise than in verl).
COVARIANCE_DTYPE = torch.float32

Scope = Literal["micro_batch", "global"]
SCOPES: tuple[Scope, ...] = ("micro_batch", "global")


def is_global(scope: Scope) -> bool:
    """Whether `scope` reduces over a process group (only "global" with one initialised)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return scope == "global" and dist.is_available() and dist.is_initialized()


class Centred(NamedTuple):
    """Per-token covariance of a selection unit and the means it is centred on.

    `adv_dev`, `score` and `top` are by-products kept for the step statistics (None when not
    made): the advantages' deviations, whose squares sum to the advantage variance, the ranking
    KL-Cov's selection used and the largest scores it found.
    """

    cov: Tensor  # B, T fp32, exactly 0 at masked tokens
    lp_mean: Tensor  # 0-d fp32
    adv_mean: Tensor  # 0-d fp32
    n: Tensor  # 0-d int64, valid tokens of the scope
    scope: Scope
    adv_dev: Tensor | None = None  # B, T fp32: (A - mean A) * keep
    score: Tensor | None = None  # N fp32: cov, masked tokens at the lowest float
    top: tuple[Tensor, Tensor] | None = None  # the k largest scores (descending), int64 indices


@torch.no_grad()
def centred(
    batch: Batch, scope: Scope = "micro_batch", *, out: tuple[Tensor, Tensor] | None = None
) -> Centred:
    """The per-token covariance of a masked batch and its means over `scope`.

    `out`: two float32 buffers of the batch's size to hold `adv_dev` and `cov` (which then
    live only as long as the caller leaves the buffers alone)."""
    lp = batch.log_prob.detach().to(COVARIANCE_DTYPE)  # B, T, 0 at masked tokens
    adv = batch.advantages.to(COVARIANCE_DTYPE)  # B, T, 0 at masked tokens
    n = batch.n
    lp_sum, adv_sum = lp.sum(), adv.sum()
    if is_global(scope):
        sums = torch.stack([lp_sum.double(), adv_sum.double(), n.double()])
        dist.all_reduce(sums)
        lp_sum, adv_sum, n = sums[0].float(), sums[1].float(), sums[2].long()
    denom = n.clamp(min=1)
    lp_mean, adv_mean = lp_sum / denom, adv_sum / denom
    # (A - mean A) * (logp - mean logp), the two factors in either order (a product is exact
    # both ways), the first one masked by multiplying (x * 1 is x); exactly 0 at masked tokens
    # even if a mean is not finite, thanks to the final masking (the step statistics count
    # masked tokens out of the zero bucket). In place: on CPU every fresh buffer costs page
    # faults.
    adv_buf, cov_buf = (None, None) if out is None else (b.view(adv.shape) for b in out)
    adv_dev = torch.sub(adv, adv_mean, out=adv_buf).mul_(batch.keep)  # B, T
    cov = torch.sub(lp, lp_mean, out=cov_buf).mul_(adv_dev)  # B, T
    cov = zero_masked(cov, batch, out=cov)
    return Centred(cov, lp_mean, adv_mean, n, scope, adv_dev=adv_dev)


@torch.no_grad()
def token_covariance(
    log_prob: Tensor, advantages: Tensor, response_mask: Tensor, *, scope: Scope = "micro_batch"
) -> Tensor:
    """Per-token covariance, shape of `log_prob`, fp32, 0 at masked tokens."""
    return centred(masked_batch(log_prob, None, advantages, response_mask), scope).cov
