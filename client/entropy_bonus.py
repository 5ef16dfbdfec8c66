"""The entropy bonus term of a policy loss: `- entropy_coeff * mean token entropy` (verl's name
and sign: the loss SUBTRACTS the coefficient times the mean entropy, so a positive coefficient
pushes entropy up).

Three cases, by what the caller has:
- the per-token entropy WITH its gradient (computed from logits inside the graph): the direct
  term, exactly verl's `- entropy_coeff * agg(entropy)`;
- the entropy WITHOUT gradient (`client.token_entropy` runs under `no_grad`, and verl's fused
  kernels hand entropy over detached): the score-function surrogate below, which needs the
  sampled tokens' `log_prob` with its gradient;
- no entropy at all (verl's policy-loss function is given none): the same surrogate with the
  mean surprisal of the batch's OTHER tokens as the baseline in place of each position's H. A
  baseline that does not depend on the sampled token leaves the expected gradient unchanged
  (E[grad log pi] = 0); leaving the token out keeps it so, up to the later tokens of the same
  response, which were sampled after it. The position's own H lowers the variance more.

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

from collections.abc import Callable

import torch
from torch import Tensor


def entropy_bonus(
    entropy_coeff: float,
    entropy: Tensor | None,
    response_mask: Tensor,
    log_prob: Tensor | None = None,
    *,
    aggregate: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The term to ADD to a policy loss: `-entropy_coeff * mean entropy`.

    `entropy` with a gradient gives the direct term. Without one (or without entropy), `log_prob`
    (the sampled tokens' log-probabilities, with gradient) is required and the score-function
    surrogate is used (see the module docstring). `aggregate` turns per-token values
    ([batch, response_len], 0 at masked tokens) into the mean, as the policy loss's own
    aggregation does (verl's `loss_agg_mode`); by default the token mean. Returns a 0-d tensor;
    0 (no graph) when `entropy_coeff` is 0.
    """
    for name, t in (("entropy", entropy), ("log_prob", log_prob)):
        if t is not None and t.shape != response_mask.shape:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} != response_mask shape {tuple(response_mask.shape)}"
            )
    like = entropy if entropy is not None else log_prob
    if like is None:
        raise ValueError("entropy_bonus needs the entropy or log_prob")
    if entropy_coeff == 0:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    mask = response_mask.to(like.dtype)

    def mean(per_token: Tensor) -> Tensor:
        if aggregate is not None:
            return aggregate(per_token)
        return per_token.sum() / mask.sum().clamp(min=1.0)

    if entropy is not None and entropy.requires_grad:
        return -entropy_coeff * mean(entropy * mask)
    if log_prob is None or not log_prob.requires_grad:
        raise ValueError(
            "entropy carries no gradient: pass log_prob (the sampled tokens' log-probabilities, "
            "with gradient) for the score-function surrogate, or compute the entropy inside the "
            "graph"
        )
    surprisal = -log_prob.detach()
    if entropy is not None:
        baseline = entropy.detach().to(log_prob.dtype)
    else:  # the other tokens' mean surprisal (leave-one-out: not the sampled token's own), an
        # estimate of the mean H that needs no host sync
        own = surprisal * mask
        baseline = (own.sum() - own) / (mask.sum() - 1.0).clamp(min=1.0)
    surrogate = log_prob * (surprisal - baseline) * mask  # > 0 factor: rarer than the baseline
    return -entropy_coeff * mean(surrogate)
