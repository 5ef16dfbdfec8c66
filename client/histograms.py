"""Histograms on the fixed bucket layouts of `monitor.layouts`, counted on the device.

The layouts (edges, names, Prometheus `le` semantics, NaN counted apart as `nonfinite`) are
defined once in `monitor.layouts`; this module only counts into them. Counts of one layout merge
across micro-batches, ranks and steps by adding, so the client adds them on the device and the
service adds them across ranks.

Speed: `torch.bucketize` is a binary search per value (about 20 ms per million values on one
CPU core). Both layouts are logarithmic, so a closed form gives the bucket index with one log;
it is biased to be exact or one too low, and a single comparison with the bucket's upper bound
(a table lookup) makes it exact. The upper bounds are compared in the values' own precision,
rounded DOWN from the float64 layout bounds: for a float32 value x and a real bound b,
x <= b exactly when x <= (the largest float32 <= b), so `le` holds bit-exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from monitor.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, LAYOUTS, bucket_count

# The closed forms below are biased down by this much (in units of one bucket): the float32
# log is off by far less, so the estimate is the right bucket or the one below it.
_BIAS = 1e-3


def _entropy_estimate(x: Tensor) -> Tensor:
    # entropy-v1: upper bound k is 2**((k - 44) / 4), so bucket = ceil(4 * log2(x) + 44).
    # x <= 2**-12 (zeros, rounding negatives) all land in bucket 0.
    return x.clamp(min=2.0**-12).log2_().mul_(4.0).add_(44.0 - _BIAS).ceil_()


def _covariance_estimate(x: Tensor) -> Tensor:
    # cov-symlog-v1: with u = 4 * log10(max(|x|, 1e-5)) + 20 (0 in the zero band), positive
    # bound i sits at u = i - 33 and negative bound i at -u = i - 32, so the bucket is
    # ceil(u) + 33 for x > 0 and ceil(-u) + 32 for x < 0: ceil(copysign(u + 0.5, x) + 32.5).
    # (x = -0.0 lands one low, which the correction fixes.)
    t = x.abs().clamp_(min=1e-5).log10_().mul_(4.0).add_(20.5).copysign_(x)
    return t.add_(32.5 - _BIAS).ceil_()


_ESTIMATES: dict[str, Callable[[Tensor], Tensor]] = {
    ENTROPY_LAYOUT: _entropy_estimate,
    COVARIANCE_LAYOUT: _covariance_estimate,
}

_tables: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


def _upper_table(layout: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Upper bounds rounded down to `dtype`, then +Inf for the +Inf, NaN and masked slots."""
    key = (layout, device, dtype)
    table = _tables.get(key)
    if table is None:
        exact = torch.tensor(LAYOUTS[layout], dtype=torch.float64)
        rounded = exact.to(dtype)
        too_high = rounded.double() > exact
        rounded = torch.where(
            too_high, torch.nextafter(rounded, rounded.new_tensor(-torch.inf)), rounded
        )
        table = torch.cat([rounded, rounded.new_full((3,), torch.inf)]).to(device)
        _tables[key] = table
    return table


def _indices(x: Tensor, layout: str) -> Tensor:
    """Bucket index (int32) of each value: 0..B-1 for the B buckets of `layout`, B for NaN."""
    B = bucket_count(layout)  # buckets, the last one +Inf
    table = _upper_table(layout, x.device, x.dtype)  # B + 2
    estimate = _ESTIMATES.get(layout)
    if estimate is None:  # a layout without a closed form: binary search
        return torch.bucketize(x, table[: B - 1], out_int32=True).masked_fill_(x.isnan(), B)
    k = estimate(x).clamp_(0, B - 1).nan_to_num_(nan=float(B)).int()
    # The estimate is right or one low: +1 where x is above its bucket's upper bound (NaN and
    # +inf compare False against the +Inf slots).
    return k.add_(x > table.index_select(0, k.view(-1)).view_as(k))


def _as_float(values: Tensor) -> Tensor:
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _count(k: Tensor, size: int) -> Tensor:
    """Occurrences of 0..size-1 in an integer tensor, int64, without a host sync."""
    k = k.view(-1)
    if k.is_cuda:  # bincount sizes its output from k.max(): a host sync on CUDA
        counts = torch.zeros(size, dtype=torch.int64, device=k.device)
        return counts.index_add_(0, k.long(), torch.ones_like(k, dtype=torch.int64))
    return torch.bincount(k, minlength=size)


@torch.no_grad()
def bucket_indices(values: Tensor, layout: str, mask: Tensor | None = None) -> Tensor:
    """Bucket index (int64) of each value: 0..B-1 for the B buckets of `layout`, B for NaN,
    B + 1 where `mask` is false."""
    k = _indices(_as_float(values), layout).long()
    if mask is not None:
        k.masked_fill_(~(mask if mask.dtype == torch.bool else mask > 0), bucket_count(layout) + 1)
    return k


@torch.no_grad()
def bucket_counts(values: Tensor, layout: str, mask: Tensor | None = None) -> Tensor:
    """Counts (int64, on the device) of the values where `mask` is true per bucket of
    `layout`, then the NaN count: shape [buckets + 1]. No host synchronisation."""
    B = bucket_count(layout)
    return _count(bucket_indices(values, layout, mask), B + 2)[: B + 1]


@torch.no_grad()
def bucket_counts_except(
    values: Tensor, layout: str, masked_value: Tensor, masked: Tensor
) -> Tensor:
    """`bucket_counts` for values whose `masked` (0-d) masked entries all equal `masked_value`
    (0-d): count everything, then take those back out of the masked value's bucket. Cheaper
    than masking every index."""
    B = bucket_count(layout)
    x = _as_float(values)
    counts = _count(_indices(x, layout), B + 1)
    where = _indices(masked_value.to(x.dtype).reshape(1), layout).long()  # 1
    return counts.index_add_(0, where, -masked.reshape(1).to(counts.dtype))


def histogram_wire(layout: str, counts: Sequence[int | float]) -> dict[str, Any]:
    """The wire form ({layout, counts, nonfinite}) of counts from `bucket_counts`."""
    B = bucket_count(layout)
    if len(counts) != B + 1:
        raise ValueError(f"{layout} needs {B} bucket counts plus the NaN count, got {len(counts)}")
    return {
        "layout": layout,
        "counts": [int(c) for c in counts[:B]],
        "nonfinite": int(counts[B]),
    }
