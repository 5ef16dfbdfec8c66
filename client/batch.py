"""One micro-batch with its masked entries zeroed once, at the boundary.

Padding may hold anything (verl guards its masked sums against NaN there). Rather than guard
every sum with a `torch.where`, which costs several plain arithmetic passes on CPU, the loss and
the statistics zero the masked entries of their inputs once. Every later per-token quantity is
then exactly 0 at masked tokens (log-ratio 0, ratio 1, loss -0 * 1), so sums need no mask, and
0/1 float weights (`keep`) mask the rest with plain multiplications. Gradients still flow to the
valid entries of `log_prob` and are exactly 0 at masked ones, as with the reference's masking.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    valid: Tensor  # B, T bool: the response mask
    keep: Tensor  # B, T fp32: 1 at valid tokens, 0 elsewhere
    n: Tensor  # 0-d int64: valid tokens
    log_prob: Tensor  # B, T, 0 at masked tokens (autograd flows through)
    old_log_prob: Tensor  # B, T, 0 at masked tokens
    advantages: Tensor  # B, T, 0 at masked tokens


def valid_mask(response_mask: Tensor) -> Tensor:
    """The response mask as booleans (verl's masks are 0/1 integers or floats)."""
    return response_mask if response_mask.dtype == torch.bool else response_mask > 0


def masked_batch(
    log_prob: Tensor, old_log_prob: Tensor | None, advantages: Tensor, response_mask: Tensor
) -> Batch:
    """The inputs with masked entries zeroed; `old_log_prob` None means "same as log_prob"."""
    shapes = {tuple(t.shape) for t in (log_prob, advantages, response_mask)}
    if old_log_prob is not None:
        shapes.add(tuple(old_log_prob.shape))
    if len(shapes) != 1 or log_prob.dim() != 2:
        raise ValueError(
            "log_prob, old_log_prob, advantages and response_mask must share one "
            f"[batch, response_len] shape, got {sorted(shapes)}"
        )
    valid = valid_mask(response_mask)
    lp = torch.where(valid, log_prob, 0.0)
    old = lp.detach() if old_log_prob is None else torch.where(valid, old_log_prob, 0.0)
    adv = torch.where(valid, advantages, 0.0)
    return Batch(valid, valid.float(), torch.count_nonzero(valid), lp, old, adv)
