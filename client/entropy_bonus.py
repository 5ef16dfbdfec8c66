"""The entropy bonus term of a policy loss: `- entropy_coeff * mean token entropy` (verl's name
and sign: the loss SUBTRACTS the coefficient times the mean entropy, so a positive coefficient
pushes entropy up).

Two cases, by what the caller has:
- the per-token entropy WITH its gradient (computed from logits inside the graph): the direct
  term, exactly verl's `- entropy_coeff * agg(entropy)`;
- the entropy WITHOUT gradient (`client.token_entropy` runs under `no_grad`, and verl's fused
  kernels hand entropy over detached): the score-function surrogate below, which needs the
  sampled tokens' `log_prob` with its gradient.

Score-function surrogate. For one position with distribution pi, H = -sum_a pi(a) log pi(a) and
    grad H = -E_{a~pi}[ grad log pi(a) * (log pi(a) + H) ]
(the `+ H` is a baseline: E[grad log pi] = 0, so it changes nothing in expectation and lowers the
variance). On the sampled token a, the surrogate
    S = log pi(a) * stopgrad(-log pi(a) - H)
has E[grad S] = grad H: a token rarer than the position's average (surprisal above H) is pushed
up, a commoner one down. Its VALUE is not the entropy (it is not reported as one); only its
gradient is. It holds the earlier positions fixed (the gradient of each position's own entropy,
as verl's direct term does) and is unbiased only for the first, on-policy update of a rollout;
later mini-batches reuse the rollout's samples without importance weights, as verl's entropy term
does on stale samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


def entropy_bonus(
    entropy_coeff: float,
    entropy: Tensor,
    response_mask: Tensor,
    log_prob: Tensor | None = None,
) -> Tensor:
    """The term to ADD to a policy loss: `-entropy_coeff * masked mean entropy` (token mean).

    `entropy` with a gradient gives the direct term. Without one, `log_prob` (the sampled tokens'
    log-probabilities, with gradient) is required and the score-function surrogate is used (see
    the module docstring). Returns a 0-d tensor; 0 (no graph) when `entropy_coeff` is 0.
    """
    if entropy.shape != response_mask.shape:
        raise ValueError(
            f"entropy shape {tuple(entropy.shape)} != response_mask shape "
            f"{tuple(response_mask.shape)}"
        )
    mask = response_mask.to(entropy.dtype)
    tokens = mask.sum().clamp(min=1.0)
    if entropy_coeff == 0:
        return torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    if entropy.requires_grad:
        return -entropy_coeff * (entropy * mask).sum() / tokens
    if log_prob is None or not log_prob.requires_grad:
        raise ValueError(
            "entropy carries no gradient: pass log_prob (the sampled tokens' log-probabilities, "
            "with gradient) for the score-function surrogate, or compute the entropy inside the "
            "graph"
        )
    if log_prob.shape != entropy.shape:
        raise ValueError(
            f"log_prob shape {tuple(log_prob.shape)} != entropy shape {tuple(entropy.shape)}"
        )
    surprisal_excess = (-log_prob.detach() - entropy).to(log_prob.dtype)  # > 0: rarer than H
    surrogate = (log_prob * surprisal_excess * mask).sum() / tokens
    return -entropy_coeff * surrogate
