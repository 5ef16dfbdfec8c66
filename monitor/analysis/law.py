"""The entropy-performance law R = -a * exp(H) + b (Cui et al., 2025), fitted live.

Linear in x = exp(H): a and b come from least squares of R on x (slope -a, intercept b). The
predicted ceiling is the fitted reward at H = 0, i.e. x = 1: R_max = b - a. The law's own track
record repeats the paper's test: fit on the run's first K steps, predict every later step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from monitor.analysis.fitting import CONFIDENCE, MIN_POINTS, Line, Result, finite, fit_line
from monitor.api_models import StepPoint

DEFAULT_FIT_STEPS = 36  # the paper fits on the first 36 steps and predicts the next 200
DEFAULT_SMOOTH = 1  # reward block size; 1 fits every step as reported
# exp(H) overflows a float above H ~ 709 nats; no real policy has more than ln(vocab) ~ 12.
MAX_ENTROPY_NATS = 700.0
# Below this R^2 the law does not describe the run and its ceiling is no prediction. The paper's
# fits sit above 0.9; the CPU toy's (0.60-0.75, docs/reproduce.json) are the kind this flags.
MIN_R2 = 0.8
# "The reward already reached" is the best mean over blocks of this many steps, and it must pass
# the ceiling's interval by two standard errors of such a mean: one lucky step is not a refutation.
REACHED_BLOCK = 10


class LawFit(Result):
    """R = -a * exp(H) + b by least squares, and the ceiling b - a with its interval."""

    enough_data: bool
    note: str = Field(description="what was fitted, or why there was not enough data")
    steps: int = Field(description="steps with a finite entropy and reward")
    points: int = Field(description="points fitted (blocks of `smooth` steps)")
    smooth: int
    first_step: int | None = None
    last_step: int | None = None
    a: float | None = None
    b: float | None = None
    se_a: float | None = None
    se_b: float | None = None
    r2: float | None = Field(None, description="None when the reward does not vary")
    residual_sd: float | None = Field(None, description="reward residual sd of a single step")
    ceiling: float | None = Field(None, description="predicted reward at entropy 0: b - a")
    ceiling_se: float | None = None
    ceiling_low: float | None = None
    ceiling_high: float | None = None
    confidence: float = CONFIDENCE
    reward_reached: float | None = Field(
        None, description=f"the best mean reward over blocks of {REACHED_BLOCK} fitted steps"
    )
    holds: bool = Field(
        False,
        description=f"the law describes the run: R^2 >= {MIN_R2} and no reward reached above "
        "the ceiling's interval. When false the ceiling is no prediction (see `verdict`)",
    )
    verdict: str = Field("", description="why the ceiling is, or is not, a prediction")


class TrackRecord(Result):
    """The law fitted on the first K steps, scored on the steps that followed."""

    enough_data: bool
    note: str
    fit_steps: int = Field(description="K: the first K reported steps are the fit window")
    fit_points: int = 0
    a: float | None = None
    b: float | None = None
    ceiling: float | None = None
    predicted: int = Field(0, description="later points the early fit predicted")
    rmse: float | None = Field(None, description="root mean squared error, reward units")
    relative_rmse: float | None = Field(None, description="rmse over the mean |reward| predicted")
    max_abs_error: float | None = None
    last_predicted_step: int | None = None


def usable(points: Sequence[StepPoint]) -> list[tuple[int, float, float]]:
    """(step, entropy, reward) of the steps where both are finite; the rest cannot inform the law
    (a step without a reward is common: rewards are often logged less often than entropy)."""
    rows = []
    for p in points:
        h, r = finite(p.stats.get("entropy")), finite(p.stats.get("reward"))
        if h is not None and r is not None and h <= MAX_ENTROPY_NATS:
            rows.append((p.step, h, r))
    return rows


def blocks(
    rows: Sequence[tuple[int, float, float]], size: int
) -> tuple[list[float], list[float], list[float]]:
    """Means of exp(H) and of R over consecutive blocks of `size` rows, and the block sizes.

    Averaging x = exp(H) and R over the same rows keeps the law exactly linear (the mean of
    -a * x + b is -a * mean(x) + b), and non-overlapping blocks keep the residuals independent,
    so weighted least squares (weight = rows in the block) still gives honest standard errors,
    which a sliding mean would not. A last partial block is kept with its smaller weight.
    """
    xs, ys, ws = [], [], []
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        xs.append(math.fsum(math.exp(h) for _, h, _ in chunk) / len(chunk))
        ys.append(math.fsum(r for *_, r in chunk) / len(chunk))
        ws.append(float(len(chunk)))
    return xs, ys, ws


def _fit(rows: Sequence[tuple[int, float, float]], smooth: int) -> tuple[Line | None, str]:
    """The fit, or None and the reason."""
    if len(rows) < MIN_POINTS:
        return None, (
            f"not enough data: {len(rows)} steps with a finite entropy and reward, "
            f"need {MIN_POINTS}"
        )
    xs, ys, ws = blocks(rows, smooth)
    if len(xs) < MIN_POINTS:
        return None, (
            f"not enough data: {len(xs)} blocks of {smooth} steps, need {MIN_POINTS} "
            "(lower `smooth` or wait for more steps)"
        )
    line = fit_line(xs, ys, ws)
    if line is None:
        return None, "not enough data: entropy does not vary, so the law cannot be fitted"
    return line, ""


def fit_law(points: Sequence[StepPoint], *, smooth: int = DEFAULT_SMOOTH) -> LawFit:
    """Fit the law on every step of `points` that has a finite entropy and reward."""
    rows = usable(points)
    line, why = _fit(rows, smooth)
    first, last = (rows[0][0], rows[-1][0]) if rows else (None, None)
    if line is None:
        return LawFit(
            enough_data=False,
            note=why,
            steps=len(rows),
            points=0,
            smooth=smooth,
            first_step=first,
            last_step=last,
        )
    low, high = line.interval(1.0)
    reached = max(blocks(rows, REACHED_BLOCK)[1])
    noise = 2 * (line.residual_sd or 0.0) / math.sqrt(REACHED_BLOCK)
    holds, verdict = _judge(line.r2, reached, line.predict(1.0), low, high, noise)
    return LawFit(
        enough_data=True,
        note=(
            f"least squares of reward on exp(entropy) over {len(rows)} steps"
            + (f" in {line.n} blocks of {smooth}" if smooth > 1 else "")
            + "; the ceiling interval assumes the law holds down to entropy 0"
        ),
        steps=len(rows),
        points=line.n,
        smooth=smooth,
        first_step=first,
        last_step=last,
        a=-line.slope,
        b=line.intercept,
        se_a=line.se_slope,
        se_b=line.se_intercept,
        r2=line.r2,
        residual_sd=line.residual_sd,
        ceiling=line.predict(1.0),
        ceiling_se=line.se_mean(1.0),
        ceiling_low=low,
        ceiling_high=high,
        reward_reached=reached,
        holds=holds,
        verdict=verdict,
    )


def _judge(
    r2: float | None, reached: float, ceiling: float, low: float, high: float, noise: float
) -> tuple[bool, str]:
    """Whether the fitted ceiling may be shown as a prediction, and the sentence that says so."""
    if r2 is None or r2 < MIN_R2:
        fit = "reward does not vary" if r2 is None else f"R² {r2:.2f} < {MIN_R2}"
        return False, f"poor fit ({fit}): the law does not describe this run; no prediction"
    if reached > high + noise:
        return False, (
            f"reward already reached {reached:.3f}, above the ceiling's interval "
            f"[{low:.3f}, {high:.3f}]: the law does not describe this run; no prediction"
        )
    return True, (
        f"predicted ceiling {ceiling:.3f} [{low:.3f}, {high:.3f}] (R² {r2:.2f}), if the law "
        "holds down to entropy 0"
    )


def track_record(
    points: Sequence[StepPoint],
    *,
    fit_steps: int = DEFAULT_FIT_STEPS,
    smooth: int = DEFAULT_SMOOTH,
) -> TrackRecord:
    """Fit on the first `fit_steps` reported steps, predict the rest, report the error.

    The later steps are compared in the same blocks of `smooth` steps as the fit, so the error
    measures the law and not the reward noise that smoothing removes.
    """
    early, later = usable(points[:fit_steps]), usable(points[fit_steps:])
    line, why = _fit(early, smooth)
    if line is None:
        return TrackRecord(enough_data=False, note=why, fit_steps=fit_steps, fit_points=len(early))
    early_fit = TrackRecord(
        enough_data=False,
        note=f"not enough data: no step with a reward after the first {fit_steps} yet",
        fit_steps=fit_steps,
        fit_points=len(early),
        a=-line.slope,
        b=line.intercept,
        ceiling=line.predict(1.0),
    )
    if not later:
        return early_fit
    xs, ys, ws = blocks(later, smooth)
    errors = [line.predict(x) - y for x, y in zip(xs, ys, strict=True)]
    total = math.fsum(ws)
    rmse = math.sqrt(math.fsum(w * e * e for w, e in zip(ws, errors, strict=True)) / total)
    mean_abs = math.fsum(w * abs(y) for w, y in zip(ws, ys, strict=True)) / total
    return early_fit.model_copy(
        update={
            "enough_data": True,
            "note": (
                f"fitted on the first {fit_steps} reported steps ({len(early)} with a reward), "
                f"predicting {len(later)} later steps"
            ),
            "predicted": len(later),
            "rmse": rmse,
            "relative_rmse": rmse / mean_abs if mean_abs > 0 else None,
            "max_abs_error": max(abs(e) for e in errors),
            "last_predicted_step": later[-1][0],
        }
    )
