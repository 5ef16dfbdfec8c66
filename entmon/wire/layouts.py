"""Fixed histogram bucket layouts: part of the wire contract between client and service.

Pure Python (no torch, no FastAPI) so the client and the monitor share one definition.

Every layout is a sorted tuple of finite upper bounds plus an implicit +Inf bucket, with
Prometheus `le` semantics: bucket i counts values x with upper[i-1] < x <= upper[i]. Counts of
the same layout merge across ranks and steps by adding. NaN values belong to no bucket and are
counted separately in `nonfinite` (they mean the run diverged).

entropy-v1 (token entropy, nats): 63 geometric upper bounds 2**((k - 44) / 4), k = 0..62,
    i.e. from 2**-11 ~ 4.9e-4 to 2**4.5 ~ 22.6 nats (ln of a 262k vocabulary is 12.5),
    four buckets per doubling; the first bucket also holds exact zeros. 64 buckets.
cov-symlog-v1 (per-token covariance, signed, heavy-tailed): symmetric logarithmic bounds
    +-10**(e / 4) for e = -20..12 (1e-5 .. 1e3), four per decade, and a zero band
    (-1e-5, 1e-5]. 67 buckets.
length-v1 (response length per sequence, tokens): the distinct integers floor(2**(k / 4)),
    k = 0..72 (1, 2, 3, 4, 5, 6, 8, 9, 11, 13, 16, 19, 22, 26, 32, ... 262144): every length
    up to 6, then four buckets per doubling; 67 bounds, 68 buckets. Lengths are integers, so
    bucket i holds the lengths upper[i-1] + 1 .. upper[i].
"""

from __future__ import annotations

import math

ENTROPY_LAYOUT = "entropy-v1"
COVARIANCE_LAYOUT = "cov-symlog-v1"
LENGTH_LAYOUT = "length-v1"

ENTROPY_UPPER: tuple[float, ...] = tuple(2.0 ** ((k - 44) / 4) for k in range(63))

_COV_MAGNITUDES = tuple(10.0 ** (e / 4) for e in range(-20, 13))
COVARIANCE_UPPER: tuple[float, ...] = tuple(-m for m in reversed(_COV_MAGNITUDES)) + _COV_MAGNITUDES

LENGTH_UPPER: tuple[float, ...] = tuple(
    sorted({float(math.floor(2 ** (k / 4))) for k in range(73)})
)

# layout name -> finite upper bounds; the bucket count is len(bounds) + 1 (the +Inf bucket).
LAYOUTS: dict[str, tuple[float, ...]] = {
    ENTROPY_LAYOUT: ENTROPY_UPPER,
    COVARIANCE_LAYOUT: COVARIANCE_UPPER,
    LENGTH_LAYOUT: LENGTH_UPPER,
}

# Which layout each named histogram of a step report must use.
# response_length counts sequences; entropy_by_length counts the tokens of those sequences that
# came with an entropy and carries their entropy's sum per bucket (`sums`): the mean token
# entropy of each response length.
HISTOGRAM_LAYOUTS: dict[str, str] = {
    "entropy": ENTROPY_LAYOUT,
    "covariance": COVARIANCE_LAYOUT,
    "response_length": LENGTH_LAYOUT,
    "entropy_by_length": LENGTH_LAYOUT,
}


def bucket_count(layout: str) -> int:
    return len(LAYOUTS[layout]) + 1


def bucket_index(layout: str, value: float) -> int:
    """Index of the bucket holding `value` (pure-Python reference for tests and small data)."""
    if math.isnan(value):
        raise ValueError("NaN belongs to no bucket; count it in `nonfinite`")
    bounds = LAYOUTS[layout]
    lo, hi = 0, len(bounds)
    while lo < hi:  # first bound >= value
        mid = (lo + hi) // 2
        if bounds[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def upper_bound_labels(layout: str) -> list[str]:
    """Prometheus `le` label values of a layout, the last one "+Inf"."""
    return [repr(b) for b in LAYOUTS[layout]] + ["+Inf"]
