"""Histograms on the fixed bucket layouts of `monitor.layouts`, counted on the device.

The layouts (edges, names, Prometheus `le` semantics, NaN counted apart as `nonfinite`) are
defined once in `monitor.layouts`; this module only counts into them. Counts of one layout merge
across micro-batches, ranks and steps by adding, so the client adds them on the device and the
service adds them across ranks.

Speed without losing exactness. `torch.bucketize` is a binary search per value (about 20 ms per
million values on one CPU core). Both layouts are logarithmic, so a closed form gives the bucket
with one log: ceil(v(x) - bias), v = 4 * log2(x) + 44 for entropy-v1, for instance. The float32
log is off by far less than the bias (1e-3 bucket), so the estimate is the right bucket or the
one below; one comparison with that bucket's upper bound (a 70-entry table lookup) settles it.
The table holds the float64 layout bounds rounded DOWN to the values' dtype: for a float32 x and
a bound b, x <= b exactly when x <= (the largest float32 <= b), so `le` holds bit-exactly.
About 5 ms per million values on one CPU core, a quarter of `bucketize`; a float64 estimate
needing no lookup was tried and is slower (twice the bytes through memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from monitor.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, LAYOUTS, bucket_count

_BIAS = 1e-3  # the estimate's downward bias, in buckets


def _entropy_estimate(x: Tensor, bias: float) -> Tensor:
    # entropy-v1: upper bound k is 2**((k - 44) / 4), so bucket = ceil(4 * log2(x) + 44).
    # x <= 2**-12 (zeros, rounding negatives) all land in bucket 0.
    return x.clamp(min=2.0**-12).log2_().mul_(4.0).add_(44.0 - bias).ceil_()


def _covariance_estimate(x: Tensor, bias: float) -> Tensor:
    # cov-symlog-v1: with w = 4 * log10|x| + 20, positive bound i sits at w = i - 33 and
    # negative bound i at -w = i - 32; the zero band (-1e-5, 1e-5] is bucket 33. Clamping w at
    # -0.5 (|x| at 10**-5.125) folds the band in: the bucket is ceil(max(w, -0.5)) + 33 for
    # x >= +0 and ceil(-max(w, -0.5)) + 32 for x <= -0, i.e.
    # ceil(copysign(max(w, -0.5) + 0.5, x) + 32.5).
    t = x.abs().clamp_(min=10.0**-5.125).log10_().mul_(4.0).add_(20.5).copysign_(x)
    return t.add_(32.5 - bias).ceil_()


_ESTIMATES: dict[str, Callable[[Tensor, float], Tensor]] = {
    ENTROPY_LAYOUT: _entropy_estimate,
    COVARIANCE_LAYOUT: _covariance_estimate,
}

_tables: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}


def _upper_table(layout: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Upper bounds rounded down to `dtype` (for a value x of that dtype, x <= b exactly when
    x <= the largest such number <= b), then +Inf for the +Inf, NaN and masked slots."""
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
    k = estimate(x, _BIAS).clamp_(0, B - 1).nan_to_num_(nan=float(B)).int()
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
def bucket_counts_unmasked(values: Tensor, layout: str) -> Tensor:
    """Counts (int64) of every value per bucket, then the NaN count: shape [buckets + 1].
    Cheaper than masking each index when the caller can take masked entries back out of the
    bucket they land in (zeros: `bucket_index(layout, 0.0)`)."""
    return _count(_indices(_as_float(values), layout), bucket_count(layout) + 1)


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
