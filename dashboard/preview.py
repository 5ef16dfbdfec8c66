"""What a knob setting would touch, read off the latest step before it is applied.

Pure functions over API data. Estimates, said as such: the client selects per micro-batch
(at least one token each when a ratio is above 0) and the covariance histogram only brackets the
Clip-Cov candidates, so counts come as "about" or as a range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preview:
    tokens: int
    penalised: float | None = None  # KL-Cov: about kl_cov_ratio x tokens
    candidates: tuple[int, int] | None = None  # Clip-Cov: (surely inside, maybe inside) (lb, ub)
    detached: tuple[float, float] | None = None  # Clip-Cov: the same bracket, capped by budget

    def sentence(self, loss_mode: str) -> str:
        head = f"On the latest step ({self.tokens} tokens) this setting would have "
        if loss_mode == "kl_cov" and self.penalised is not None:
            return head + f"penalised about {self.penalised:.0f} tokens (KL-Cov)."
        if loss_mode == "clip_cov" and self.candidates is not None and self.detached is not None:
            lo, hi = self.candidates
            d_lo, d_hi = self.detached
            found = f"{lo}" if lo == hi else f"{lo} to {hi}"
            kept = f"{d_lo:.0f}" if d_lo == d_hi else f"{d_lo:.0f} to {d_hi:.0f}"
            return head + f"found {found} Clip-Cov candidates and detached {kept} of them."
        return head + "touched no token: vanilla PPO/GRPO."


def candidates_between(
    counts: Sequence[int], upper: Sequence[float], lb: float, ub: float
) -> tuple[int, int]:
    """Tokens with lb < cov < ub from histogram counts (bucket i holds (upper[i-1], upper[i]],
    the last bucket everything above): (buckets wholly inside, buckets overlapping)."""
    edges = [-float("inf"), *upper, float("inf")]
    inside = overlap = 0
    for i, count in enumerate(counts):
        low, high = edges[i], edges[i + 1]
        if low >= lb and high < ub:
            inside += count
        if high > lb and low < ub:
            overlap += count
    return inside, overlap


def preview(
    knobs: Mapping[str, Any], latest: Mapping[str, Any], covariance: Mapping[str, Any] | None
) -> Preview | None:
    """The preview for `knobs` on the latest merged step and its covariance histogram (the
    API's series: `upper_bounds` and `steps`); None without a step to read."""
    tokens = latest.get("stats", {}).get("tokens")
    if not tokens:
        return None
    tokens = int(tokens)
    budget = knobs["kl_cov_ratio"] * tokens
    out = Preview(tokens=tokens, penalised=max(budget, 1.0) if budget > 0 else 0.0)
    rows = (covariance or {}).get("steps") or []
    if rows and rows[-1]["step"] == latest.get("step"):
        upper = (covariance or {})["upper_bounds"]
        lb, ub = knobs["clip_cov_lb"], knobs["clip_cov_ub"]
        inside, overlap = candidates_between(rows[-1]["counts"], upper, lb, ub)
        cap = knobs["clip_cov_ratio"] * tokens
        cap = max(cap, 1.0) if cap > 0 else 0.0
        out = Preview(
            tokens=tokens,
            penalised=out.penalised,
            candidates=(inside, overlap),
            detached=(min(inside, cap), min(overlap, cap)),
        )
    return out
