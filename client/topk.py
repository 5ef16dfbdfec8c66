"""The k largest entries of a 1-D tensor, for small k and large N, without sorting N.

`torch.topk` on CPU costs about 14 elementwise passes (2 ms for k = 209 of a million values
on one core), and every step takes two: Clip-Cov's random pick and the top-covariance
tokens. Cut the values into chunks of C: every entry of the top k lies in a chunk whose
maximum is at least the k-th largest value, and at most k chunks hold such entries, so the k
chunks of largest maximum (one reduction pass and a topk of N / C maxima) hold a valid top k;
a topk of their k * C values (plus the tail that fills no whole chunk) finishes it. With ties
at the k-th value this is a valid top k, maybe not the one `torch.topk` returns. NaN counts as
the largest value, as in `torch.topk` (`amax` propagates it).

Used on CPU, where it was measured (bench/README.md); elsewhere `torch.topk` (a radix select
on CUDA). Sync-free either way: no data-dependent shapes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Measured on one CPU core: below 2**16 values, or above one wanted value per 512, one
# `torch.topk` is as cheap as the chunked route's eight ops.
_CHUNKED_FROM = 1 << 16
_CHUNKED_MAX_SHARE = 512


def top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Values and int64 indices of the k largest entries of 1-D `x`, sorted descending."""
    N = x.numel()
    if x.device.type != "cpu" or k <= 0 or N < _CHUNKED_FROM or k * _CHUNKED_MAX_SHARE > N:
        return torch.topk(x, min(k, N), sorted=True)
    x = x.contiguous()
    # Chunks of C with C ~ sqrt(N / k) balance the two small topks (N / C maxima, k * C
    # values); a power of two keeps the rows aligned.
    C = 1 << max(4, round(math.log2(math.sqrt(N / k))))
    M = N // C  # whole chunks (>= k, since k * 512 <= N and C <= sqrt(N / k) * 1.42)
    body = x[: M * C].view(M, C)
    chunks = torch.topk(body.amax(dim=1), k, sorted=False).indices  # k
    values = body.index_select(0, chunks).view(-1)  # k * C
    if M * C < N:
        values = torch.cat([values, x[M * C :]])
    best, at = torch.topk(values, k, sorted=True)
    # Back to positions in x: `at` is in a gathered chunk, or in the tail after them.
    in_chunk = chunks.index_select(0, torch.div(at, C, rounding_mode="floor").clamp_(max=k - 1))
    index = torch.where(at < k * C, in_chunk * C + at % C, at - k * C + M * C)
    return best, index
