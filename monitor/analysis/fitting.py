"""Small, dependency-free statistics the analyses share: weighted least squares of a line,
Student-t quantiles, Pearson correlation, and the base of every result model.

Pure Python on purpose: the server extra has no numpy, a line fit over 2000 points takes about
4 ms here, and the whole analysis of 2000 steps costs less than reading them from Redis
(bench/bench_analysis_scrape.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, ConfigDict

MIN_POINTS = 3  # a line with a residual degree of freedom needs three points
CONFIDENCE = 0.95  # level of every reported interval
# x is "constant" when its weighted variance is below this fraction of its squared mean:
# a slope fitted on such data is rounding noise.
CONSTANT_X_REL_VAR = 1e-12
_CF_EPS = 1e-14
_CF_TINY = 1e-300
_CF_MAX_TERMS = 500


class Result(BaseModel):
    """Base of every analysis result: strict fields, non-finite numbers as JSON strings."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


def finite(value: object) -> float | None:
    """The value as a float when it is a finite number, else None (missing, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Line:
    """y = intercept + slope * x fitted by weighted least squares (weights = 1 / variance, up
    to a common factor); standard errors from the weighted residual variance."""

    n: int
    weight: float  # sum of weights
    slope: float
    intercept: float
    x_mean: float  # weighted
    sxx: float  # sum w (x - x_mean)^2
    ssr: float  # sum w residual^2
    sst: float  # sum w (y - y_mean)^2

    @property
    def dof(self) -> int:
        return self.n - 2

    @property
    def residual_sd(self) -> float:
        """s: the residual standard deviation of a unit-weight point."""
        return math.sqrt(self.ssr / self.dof)

    @property
    def se_slope(self) -> float:
        return self.residual_sd / math.sqrt(self.sxx)

    @property
    def se_intercept(self) -> float:
        return self.se_mean(0.0)

    @property
    def r2(self) -> float | None:
        """Coefficient of determination; None when y does not vary."""
        return 1.0 - self.ssr / self.sst if self.sst > 0 else None

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x

    def se_mean(self, x: float) -> float:
        """Standard error of the fitted mean at x: s * sqrt(1 / W + (x - x_mean)^2 / Sxx)."""
        return self.residual_sd * math.sqrt(1.0 / self.weight + (x - self.x_mean) ** 2 / self.sxx)

    def interval(self, x: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Confidence interval of the fitted mean at x (Student t with n - 2 dof)."""
        half = t_quantile(0.5 + confidence / 2, self.dof) * self.se_mean(x)
        y = self.predict(x)
        return y - half, y + half


def fit_line(
    xs: Sequence[float], ys: Sequence[float], weights: Sequence[float] | None = None
) -> Line | None:
    """Weighted least squares of ys on xs; None when fewer than MIN_POINTS points or x constant.

    Two-pass (centred) sums keep it accurate when x sits far from zero, such as step numbers.
    """
    n = len(xs)
    if n != len(ys) or (weights is not None and len(weights) != n):
        raise ValueError("xs, ys and weights must have the same length")
    if n < MIN_POINTS:
        return None
    w = list(weights) if weights is not None else [1.0] * n
    total = math.fsum(w)
    x_mean = math.fsum(wi * x for wi, x in zip(w, xs, strict=True)) / total
    y_mean = math.fsum(wi * y for wi, y in zip(w, ys, strict=True)) / total
    sxx = math.fsum(wi * (x - x_mean) ** 2 for wi, x in zip(w, xs, strict=True))
    if sxx <= CONSTANT_X_REL_VAR * total * max(x_mean * x_mean, 1e-300):
        return None
    sxy = math.fsum(wi * (x - x_mean) * (y - y_mean) for wi, x, y in zip(w, xs, ys, strict=True))
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    ssr = math.fsum(
        wi * (y - intercept - slope * x) ** 2 for wi, x, y in zip(w, xs, ys, strict=True)
    )
    sst = math.fsum(wi * (y - y_mean) ** 2 for wi, y in zip(w, ys, strict=True))
    return Line(n, total, slope, intercept, x_mean, sxx, ssr, sst)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when fewer than MIN_POINTS pairs or either side is constant."""
    n = len(xs)
    if n < MIN_POINTS:
        return None
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """1 / (1 + d1 / (1 + d2 / (1 + ...))), the fraction of the regularised incomplete beta
    function, by the modified Lentz method; converges fast for x < (a + 1) / (a + b + 2)."""
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, 2 * _CF_MAX_TERMS):
        m = j // 2
        if j % 2:  # odd terms d_{2m+1}
            dj = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # even terms d_{2m}
            dj = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + dj * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + dj / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        f *= c * d
        if abs(c * d - 1.0) < _CF_EPS:
            break
    return 1.0 / f


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges on the other side
        return 1.0 - regularized_beta(b, a, 1.0 - x)
    log_front = (
        a * math.log(x)
        + b * math.log1p(-x)
        - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )
    return math.exp(log_front) / a * _beta_continued_fraction(a, b, x)


def t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    tail = 0.5 * regularized_beta(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=1024)
def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t (bisection on the CDF; p in (0, 1), dof >= 1)."""
    if not 0.0 < p < 1.0 or dof < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and dof >= 1, got p={p}, dof={dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)
