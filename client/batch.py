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
    keep_bits: Tensor | None = None  # B, T int32: all 32 bits set at valid tokens, 0 elsewhere


def zero_masked(x: Tensor, batch: Batch, *, out: Tensor | None = None) -> Tensor:
    """`torch.where(batch.valid, x, 0.0)`, bit for bit; `out`: a buffer of x's size and dtype
    to write into."""
    return _zero_masked(x, batch.valid, batch.keep_bits, out)


def _zero_masked(x: Tensor, valid: Tensor, bits: Tensor | None, out: Tensor | None) -> Tensor:
    # On a float32 tensor without gradient: a bitwise AND with `bits` (all bits kept at valid
    # tokens, none, i.e. +0.0, elsewhere), a plain integer pass about a third of `where`'s time
    # on CPU, whatever x holds (NaN, inf).
    if bits is None or x.dtype != torch.float32 or x.shape != bits.shape or x.requires_grad:
        if out is None:
            return torch.where(valid, x, 0.0)
        return torch.where(valid, x, x.new_zeros(()), out=out.view(x.shape))
    into = None if out is None else out.view(torch.int32).view(bits.shape)
    return torch.bitwise_and(x.view(torch.int32), bits, out=into).view(torch.float32)


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
    # Row-major (a no-op when already so): later steps flatten with `view`, and a mask or
    # tensor of any other stride (a transposed one) must give the same result.
    log_prob, advantages = log_prob.contiguous(), advantages.contiguous()
    if old_log_prob is not None:
        old_log_prob = old_log_prob.contiguous()
    valid = valid_mask(response_mask).contiguous()
    as_bytes = valid.view(torch.uint8)  # bool -> float or int is several times faster from bytes
    keep = as_bytes.float()
    bits = as_bytes.to(torch.int32).neg_()  # 0 -> 0, 1 -> -1: all 32 bits set
    lp = torch.where(valid, log_prob, 0.0)  # autograd flows through `where`
    old = lp.detach() if old_log_prob is None else _zero_masked(old_log_prob, valid, bits, None)
    adv = _zero_masked(advantages, valid, bits, None)
    return Batch(valid, keep, torch.count_nonzero(valid), lp, old, adv, bits)
