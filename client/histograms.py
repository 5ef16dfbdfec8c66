"""Histograms on the fixed bucket layouts of `entmon.wire.layouts`, counted on the device.

The layouts (edges, names, Prometheus `le` semantics, NaN counted apart as `nonfinite`) are
defined once in `entmon.wire.layouts`; this module only counts into them. Counts of one layout merge
across micro-batches, ranks and steps by adding, so the client adds them on the device and the
service adds them across ranks.

Speed without losing exactness. `torch.bucketize` is a binary search per value (about 20 ms per
million values on one CPU core). Both layouts are logarithmic, so the bucket has a closed form,
and float32 values (what the step statistics count) get it from their bits, without a logarithm:

- The bits of a positive float32 read as an integer I are a piecewise-linear log2 (Mitchell's
  approximation): I / 2**23 - 127 is at most 0.086 below log2 x, exact at powers of two.
- entropy-v1, bounds 2**((k - 44) / 4): the bucket is ceil(4 * log2 x) + 44, and a shift,
  (I - 1) >> 21, is floor(4 * that estimate): one integer shift and an add give the bucket or
  the one below.
- cov-symlog-v1, bounds +-10**(e / 4): 4 * log10|x| + 20 from I costs a conversion and a
  multiply-add, at most 0.104 bucket low; biased down by 0.11 bucket, the estimate is the
  right bucket or the one below.

Either way one comparison with the estimated bucket's upper bound (a 70-entry table lookup)
settles it.
The table holds the float64 layout bounds rounded DOWN to the values' dtype: for a float32 x and
a bound b, x <= b exactly when x <= (the largest float32 <= b), so `le` holds bit-exactly. Other
dtypes (float64) take the same estimate-and-correct route with a real logarithm. About 3-4 ms
per million float32 values on one CPU core with the counting (bucketize alone takes 20, the
logarithm alone 1.3); a float64 estimate needing no lookup was tried and is slower (twice the
bytes through memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from entmon.wire.layouts import (
    COVARIANCE_LAYOUT,
    ENTROPY_LAYOUT,
    LAYOUTS,
    LENGTH_LAYOUT,
    bucket_count,
)

_BIAS = 1e-3  # the logarithm estimate's downward bias, in buckets
# cov-symlog-v1 from the bits of |x| read as an integer I: log2|x| ~ I / 2**23 - 127.
_COV_LOW = 10.0**-5.125  # |x| below: the zero band (w = -0.5 below)
_COV_HIGH = 10.0**3.2  # |x| above: the outer buckets (bound 1e3 < 10**3.2)
_COV_SCALE = 4 * math.log10(2) / 2**23
_COV_SHIFT = 20.5 - 4 * math.log10(2) * 127  # w + 0.5, w = 4 * log10|x| + 20
_COV_BITS_BIAS = 0.11  # > Mitchell's 0.104 bucket plus float32 rounding


def _entropy_estimate(x: Tensor, bias: float, out: Tensor) -> Tensor:
    # entropy-v1: upper bound k is 2**((k - 44) / 4), so bucket = ceil(4 * log2(x) + 44).
    # x <= 2**-12 (zeros, rounding negatives) all land in bucket 0.
    t = torch.clamp(x, min=2.0**-12, out=out)
    return t.log2_().mul_(4.0).add_(44.0 - bias).ceil_()


def _covariance_estimate(x: Tensor, bias: float, out: Tensor) -> Tensor:
    # cov-symlog-v1: with w = 4 * log10|x| + 20, positive bound i sits at w = i - 33 and
    # negative bound i at -w = i - 32; the zero band (-1e-5, 1e-5] is bucket 33. Clamping w at
    # -0.5 (|x| at 10**-5.125) folds the band in: the bucket is ceil(max(w, -0.5)) + 33 for
    # x >= +0 and ceil(-max(w, -0.5)) + 32 for x <= -0, i.e.
    # ceil(copysign(max(w, -0.5) + 0.5, x) + 32.5).
    t = torch.abs(x, out=out).clamp_(min=_COV_LOW).log10_().mul_(4.0).add_(20.5)
    return t.copysign_(x).add_(32.5 - bias).ceil_()


_ESTIMATES: dict[str, Callable[[Tensor, float, Tensor], Tensor]] = {
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
        table = torch.cat([rounded, rounded.new_full((3,), torch.inf)])
        if device.type == "cuda":  # from pinned memory: a plain copy would sync the host
            table = table.pin_memory().to(device, non_blocking=True)
        _tables[key] = table = table.to(device)
    return table


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}


def _entropy_from_bits(x: Tensor, out: Tensor, y: Tensor) -> Tensor:
    """entropy-v1 bucket estimates of float32 values (see the module docstring), into `out`:
    right or one low, NaN at 64. `y` is x-sized float32 scratch.

    x is clamped first: at or below the first bound 2**-11 into bucket 0, above the last
    bound 2**4.5 into the +Inf bucket (2**4.625 sits inside it), NaN to 2**5, which the
    formula sends to bucket 64, the NaN slot. For y = 2**(e + f'), 0 <= f' < 1 read from the
    bits of y less one ulp (so that an exact power of two counts in the octave below, as
    `le` wants), 4 * log2 y + 44 lies in [4 * (e + f') + 44, 4 * (e + f') + 44.35]: its
    ceiling is floor(4 * (e + f')) + 45 or one more."""
    torch.clamp(x, 2.0**-11, 2.0**4.625, out=y).nan_to_num_(nan=32.0)
    bits = y.view(torch.int32).sub_(1)
    return torch.bitwise_right_shift(bits, 21, out=out).add_(45 - 4 * 127)


def _covariance_from_bits(x: Tensor, a: Tensor, t: Tensor) -> Tensor:
    """cov-symlog-v1 bucket estimates of float32 values (see the module docstring), as
    integral floats in `t`: right or one low, NaN at 67. `a` and `t` are x-sized
    float32 scratch.

    The `_covariance_estimate` formula with log2|x| read from the bits, and +1 - bias instead
    of the ceiling: the conversion to integers truncates, a floor on these positive values.
    |x| is clamped first (the zero band; above 10**3.2 the outer buckets), which keeps every
    finite estimate within the layout."""
    torch.abs(x, out=a).clamp_(_COV_LOW, _COV_HIGH)  # NaN stays NaN
    # The bits as a number (about (log2|x| + 127) * 2**23), scaled: one pass.
    torch.add(_cov_shift(x.device), a.view(torch.int32), alpha=_COV_SCALE, out=t)
    t.add_(a, alpha=0.0)  # the integer lost NaN: a * 0 brings it back (a is never inf)
    t.copysign_(x).add_(33.5 - _COV_BITS_BIAS)
    return t.nan_to_num_(nan=float(bucket_count(COVARIANCE_LAYOUT)))


_shifts: dict[torch.device, Tensor] = {}


def _cov_shift(device: torch.device) -> Tensor:
    shift = _shifts.get(device)
    if shift is None:
        # a fill, not torch.tensor(...): copying a host scalar to CUDA would sync the host
        shift = _shifts[device] = torch.full((), _COV_SHIFT, device=device)
    return shift


def _indices(
    x: Tensor,
    layout: str,
    *,
    out: Tensor | None = None,
    temps: Sequence[Tensor] = (),
) -> Tensor:
    """Bucket index (int32) of each value: 0..B-1 for the B buckets of `layout`, B for NaN,
    in x's shape. Written into `out` (int32, x's size) when
    given; `temps` (two 1-D buffers of x's dtype and size) spare the temporaries'
    allocations. Works on 1-D tensors: views cost microseconds, as many as small passes."""
    shape = x.shape
    if x.dim() != 1 or not x.is_contiguous():
        x = x.reshape(-1)
    N = x.numel()
    if out is None:
        out = torch.empty(N, dtype=torch.int32, device=x.device)
    elif out.dim() != 1:
        out = out.view(-1)
    if len(temps) == 2 and all(b.numel() == N and b.dtype == x.dtype for b in temps):
        t, t2 = temps
    else:
        t, t2 = torch.empty_like(x), torch.empty_like(x)
    float32 = x.dtype == torch.float32
    table = _upper_table(layout, x.device, x.dtype)  # B + 2
    if layout == ENTROPY_LAYOUT and float32:
        _entropy_from_bits(x, out, t)
    elif layout == COVARIANCE_LAYOUT and float32:
        out.copy_(_covariance_from_bits(x, t2, t))  # exact integers
    else:
        B = bucket_count(layout)  # buckets, the last one +Inf
        estimate = _ESTIMATES.get(layout)
        if estimate is None:  # a layout without a closed form: binary search
            k = torch.bucketize(x, table[: B - 1], out_int32=True)
            out.copy_(k.masked_fill_(x.isnan(), B))
            return out.view(shape)
        t = estimate(x, _BIAS, t)
        out.copy_(t.clamp_(0, B - 1).nan_to_num_(nan=float(B)))
    # The estimate is right or one low: +1 where x is above its bucket's upper bound (NaN and
    # +inf compare False against the +Inf slots). The bound and the comparison reuse t's
    # memory; a comparison written as int32 is several times cheaper than one written as bool.
    torch.index_select(table, 0, out, out=t)
    out.add_(torch.gt(x, t, out=t.view(_SAME_WIDTH_INT[t.dtype])))
    return out if len(shape) == 1 else out.view(shape)


def _as_float(values: Tensor) -> Tensor:
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _count(k: Tensor, size: int) -> Tensor:
    """Occurrences of 0..size-1 in an integer tensor, int64, without a host sync."""
    if k.dim() != 1:
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
def bucket_counts_unmasked(
    values: Tensor, layout: str, *, scratch: Sequence[Tensor] = ()
) -> Tensor:
    """Counts (int64) of every value per bucket, then the NaN count: shape [buckets + 1].
    Cheaper than masking each index when the caller can take masked entries back out of the
    bucket they land in (zeros: `bucket_index(layout, 0.0)`). `scratch`: three 1-D float32
    buffers of the values' size to work in instead of allocating (ignored for other values)."""
    x = _as_float(values)
    out, temps = None, scratch[:2]
    if len(scratch) == 3 and scratch[2].numel() == x.numel() and scratch[2].dtype == torch.float32:
        out = scratch[2].view(torch.int32)
    return _count(_indices(x, layout, out=out, temps=temps), bucket_count(layout) + 1)


@torch.no_grad()
def bucket_counts_joint(
    first: Tensor,
    first_layout: str,
    second: Tensor,
    second_layout: str,
    *,
    scratch: Sequence[Tensor] = (),
) -> Tensor:
    """Joint bucket counts (int64) of two tensors of the same size, shape
    [buckets + 1 of `first_layout`, buckets + 1 of `second_layout`] (NaN last on both axes):
    its row sums are `bucket_counts_unmasked(first, ...)`, its column sums the second's.

    One counting pass over the joint index (first * size of second + second) instead of one
    per histogram: counting is the dearest pass of a histogram, and the joint counts are few
    (65 * 68 for the step's two). `scratch`: four 1-D float32 buffers of the values' size to
    work in (two for the indices, two for temporaries) instead of allocating."""
    x, y = _as_float(first), _as_float(second)
    N = x.numel()
    if len(scratch) == 4 and all(t.numel() == N and t.dtype == torch.float32 for t in scratch):
        i, j = scratch[0].view(torch.int32), scratch[1].view(torch.int32)
        temps: Sequence[Tensor] = scratch[2:]
    else:
        i, j = (torch.empty(N, dtype=torch.int32, device=x.device) for _ in range(2))
        temps = ()
    size = bucket_count(second_layout) + 1  # buckets and NaN
    _indices(x, first_layout, out=i, temps=temps)
    _indices(y, second_layout, out=j, temps=temps)
    joint = _count(torch.add(j, i, alpha=size, out=j), (bucket_count(first_layout) + 1) * size)
    return joint.view(-1, size)


@torch.no_grad()
def length_buckets(lengths: Tensor) -> Tensor:
    """length-v1 bucket (int64) of each length (float32 integers; 0 lands in bucket 0): a
    binary search, on the few values of a micro-batch's rows. No host synchronisation."""
    table = _upper_table(LENGTH_LAYOUT, lengths.device, torch.float32)
    return torch.bucketize(lengths, table[: bucket_count(LENGTH_LAYOUT) - 1])


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
