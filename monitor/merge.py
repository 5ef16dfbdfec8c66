"""Merging the reports of one step from several ranks (pure functions).

Each statistic merges by its rule in `entmon.wire.stats` (counts add, cov_max takes the max,
standard deviations pool, every other statistic is a mean weighted by the rank's token count, or
by the count its `weight` names (`sequences` for per-sequence means); equal weights when a rank
did not send that count). NaN propagates: never hidden.

A driver's report (rank DRIVER_RANK: verl's trainer) carries whole-step values, not a rank's
share, so it takes no part in the weighting: `with_driver` lays it over the ranks' merge.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from entmon.wire.numbers import from_wire
from entmon.wire.stats import (
    COUNT_STATS,
    MAX_STATS,
    POOLED_STDS,
    WEIGHTS,
    pooled_std,
    weighted_mean,
)


def merge_stats(ranks: Sequence[Mapping[str, float | int | None]]) -> dict[str, float | int | None]:
    if len(ranks) == 1:  # the common single-process case: nothing to merge
        return dict(ranks[0])
    names = {k for r in ranks for k in r}
    merged: dict[str, float | int | None] = {}
    for name in sorted(names):
        weight = WEIGHTS.get(name, "tokens")
        present = [(r[name], _weight(r, weight)) for r in ranks if r.get(name) is not None]
        values = [v for v, _ in present]
        if not present:
            merged[name] = None
        elif name in COUNT_STATS:
            merged[name] = sum(values)  # type: ignore[arg-type]
        elif name in MAX_STATS:
            merged[name] = math.nan if any(_isnan(v) for v in values) else max(values)  # type: ignore[type-var]
        elif name in POOLED_STDS:
            weights = [_weight(r) for r in ranks]
            merged[name] = _pooled_std(ranks, weights, name, POOLED_STDS[name])
        else:
            merged[name] = weighted_mean(present)
    return merged


def merge_user(ranks: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if len(ranks) == 1:
        return dict(ranks[0])
    names = {k for r in ranks for k in r}
    return {k: weighted_mean([(r[k], 1.0) for r in ranks if k in r]) for k in sorted(names)}


def with_driver(
    merged: Mapping[str, Any], driver: Mapping[str, Any], counts: Collection[str] = COUNT_STATS
) -> dict[str, Any]:
    """The ranks' merged statistics with the driver's laid over them: a count adds, any other
    statistic the driver sent is the step's (measured on the whole batch), except that a
    non-finite merged value stays (a diverged rank is never hidden)."""
    out = dict(merged)
    for name, value in driver.items():
        mine = out.get(name)
        if value is None:
            continue
        if mine is None:
            out[name] = value
        elif name in counts:
            out[name] = mine + value
        elif _finite(mine):
            out[name] = value
    return out


def merge_counts(histograms: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Add histograms of one layout (counts, nonfinite, and the per-bucket `sums` of
    entropy_by_length); None when given none."""
    merged: dict[str, Any] | None = None
    for h in histograms:
        if merged is None:
            merged = {
                "layout": h["layout"],
                "counts": list(h["counts"]),
                "nonfinite": h["nonfinite"],
            }
            if "sums" in h:
                merged["sums"] = [float(from_wire(x)) for x in h["sums"]]
            continue
        if h["layout"] != merged["layout"]:
            raise ValueError(f"cannot merge layouts {merged['layout']} and {h['layout']}")
        merged["counts"] = [a + b for a, b in zip(merged["counts"], h["counts"], strict=True)]
        merged["nonfinite"] += h["nonfinite"]
        if "sums" in merged:
            sums = [float(from_wire(x)) for x in h.get("sums", ())]
            merged["sums"] = [a + b for a, b in zip(merged["sums"], sums, strict=True)]
    return merged


def _weight(stats: Mapping[str, float | int | None], count: str = "tokens") -> float:
    weight = stats.get(count)
    return float(weight) if weight else 1.0


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _isnan(value: float | int | None) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _pooled_std(
    ranks: Sequence[Mapping[str, float | int | None]], weights: Sequence[float], std: str, mean: str
) -> float | None:
    parts = [
        (float(r[mean]), float(r[std]) ** 2, w)  # type: ignore[arg-type]
        for r, w in zip(ranks, weights, strict=True)
        if r.get(std) is not None and r.get(mean) is not None
    ]
    if not parts:  # a std without its mean cannot be pooled; fall back to the weighted mean
        return weighted_mean(
            [(r[std], w) for r, w in zip(ranks, weights, strict=True) if r.get(std) is not None]
        )
    return pooled_std(parts)[1]
