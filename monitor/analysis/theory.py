"""The theory check: does the measured entropy change follow Delta H ~= -eta * Cov(logp, A)?

Per pair of consecutive reported steps t < t': Delta H per step = (H_t' - H_t) / (t' - t), set
against step t's mean token covariance (the update of step t uses step t's covariance and its
effect shows in the entropy measured at t'). Dividing by the gap keeps the rate comparable when
steps are logged sparsely or sampled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from pydantic import Field

from monitor.analysis.fitting import MIN_POINTS, Result, finite, pearson
from monitor.api_models import StepPoint


class TheoryCheck(Result):
    enough_data: bool
    note: str
    pairs: int = Field(0, description="consecutive step pairs with entropy and covariance")
    correlation: float | None = Field(
        None, description="Pearson(Delta H per step, cov_mean); the theory predicts < 0"
    )
    sign_agreement: float | None = Field(
        None, description="fraction of pairs where Delta H has the sign of -cov_mean"
    )
    eta: float | None = Field(None, description="least squares Delta H = -eta * cov_mean")
    eta_se: float | None = None


def pairs(points: Sequence[StepPoint]) -> list[tuple[float, float]]:
    """(Delta H per step, cov_mean) for consecutive steps with finite values."""
    out = []
    for p, q in itertools.pairwise(points):
        h0, h1 = finite(p.stats.get("entropy")), finite(q.stats.get("entropy"))
        cov = finite(p.stats.get("cov_mean"))
        if h0 is not None and h1 is not None and cov is not None and q.step > p.step:
            out.append(((h1 - h0) / (q.step - p.step), cov))
    return out


def theory_check(points: Sequence[StepPoint]) -> TheoryCheck:
    rows = pairs(points)
    if len(rows) < MIN_POINTS:
        return TheoryCheck(
            enough_data=False,
            note=(
                f"not enough data: {len(rows)} consecutive steps with a finite entropy and "
                f"cov_mean, need {MIN_POINTS}"
            ),
            pairs=len(rows),
        )
    dh = [d for d, _ in rows]
    cov = [c for _, c in rows]
    scc = math.fsum(c * c for c in cov)
    if scc <= 0:
        return TheoryCheck(
            enough_data=False,
            note="not enough data: cov_mean is 0 on every step, eta cannot be fitted",
            pairs=len(rows),
        )
    # Through the origin: the theory has no intercept. eta = -sum(dh * c) / sum(c^2).
    eta = -math.fsum(d * c for d, c in rows) / scc
    ssr = math.fsum((d + eta * c) ** 2 for d, c in rows)
    eta_se = math.sqrt(ssr / (len(rows) - 1) / scc)
    signed = [(d, c) for d, c in rows if d != 0 and c != 0]
    agree = sum(1 for d, c in signed if (d > 0) != (c > 0))
    return TheoryCheck(
        enough_data=True,
        note=f"{len(rows)} consecutive step pairs",
        pairs=len(rows),
        correlation=pearson(dh, cov),
        sign_agreement=agree / len(signed) if signed else None,
        eta=eta,
        eta_se=eta_se,
    )
