"""Entropy collapse: where the entropy stands against the run's start, how fast it falls, and a
state decided by the first rule that matches (see ANALYSIS.md)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from monitor.analysis.fitting import MIN_POINTS, Result, finite, fit_line
from monitor.api_models import StepPoint

START_STEPS = 5
"""Entropy "at start" is the median of the first START_STEPS steps that carry a finite entropy.
The gauge entmon_policy_entropy_relative uses the same definition (start_entropy below)."""

DEFAULT_FLOOR = 0.1
"""Collapse floor as a fraction of the start entropy: a run whose entropy has lost 90% of its
start has collapsed (the paper's baseline loses most of its entropy in the first few hundred
steps, and KL-Cov keeps it over 10x higher)."""

EXPLODING_RELATIVE = 1.5
"""Entropy at or above 1.5x its start is exploding: RL sharpens a policy, so a sustained rise
this large means an entropy bonus or a too-strong intervention is winning (the paper's entropy
bonus of 1e-2 explodes)."""

DECLINE_MIN_T = 3.0
"""A decline counts only when the fitted log-entropy slope is at least 3 standard errors below
zero, so step-to-step noise on a flat entropy never reads as a decline."""

DEFAULT_HORIZON = 1000
"""Declining: at the current rate the entropy crosses the floor within this many steps."""

DEFAULT_TREND_POINTS = 50
"""The decay rate is fitted on the last 50 reported steps: recent enough to follow the current
speed, long enough to average out noise."""

State = Literal["healthy", "declining", "collapsed", "exploding", "non-finite"]
STATES: tuple[State, ...] = ("healthy", "declining", "collapsed", "exploding", "non-finite")


class Collapse(Result):
    state: State | None = Field(description="None when there is not enough data")
    rule: str = Field(description="the rule that decided the state, with its numbers")
    enough_data: bool
    start_entropy: float | None = Field(None, description="median of the first steps, nats")
    latest_step: int | None = None
    latest_entropy: float | None = None
    relative: float | None = Field(None, description="latest entropy over the start entropy")
    floor: float = Field(description="collapse floor, a fraction of the start entropy")
    floor_entropy: float | None = Field(None, description="the floor in nats")
    decay_rate: float | None = Field(
        None, description="fitted -d ln(entropy) / d step over the trend window (> 0: falling)"
    )
    decay_rate_se: float | None = None
    trend_points: int = 0
    half_life_steps: float | None = Field(None, description="ln 2 / decay_rate, when falling")
    halved_at_step: int | None = Field(None, description="first step at or below half the start")
    floor_crossing_step: float | None = Field(
        None, description="projected step at which the trend crosses the floor, when falling"
    )
    nonfinite_steps: int = Field(0, description="steps whose entropy is NaN or infinite")


def start_entropy(points: Sequence[StepPoint], start_steps: int = START_STEPS) -> float | None:
    """Median entropy of the first `start_steps` steps with a finite entropy; None if none."""
    first: list[float] = []
    for p in points:
        h = finite(p.stats.get("entropy"))
        if h is not None:
            first.append(h)
            if len(first) == start_steps:
                break
    return statistics.median(first) if first else None


def collapse(
    points: Sequence[StepPoint],
    *,
    floor: float = DEFAULT_FLOOR,
    horizon: int = DEFAULT_HORIZON,
    trend_points: int = DEFAULT_TREND_POINTS,
) -> Collapse:
    """Relative entropy, decay, projection and state of a run's steps (in step order)."""
    reported = [(p.step, p.stats["entropy"]) for p in points if p.stats.get("entropy") is not None]
    rows = [(s, h) for s, v in reported if (h := finite(v)) is not None]
    start = start_entropy(points)
    base = Collapse(
        state=None,
        rule="",
        enough_data=False,
        start_entropy=start,
        floor=floor,
        nonfinite_steps=len(reported) - len(rows),
    )
    if reported and finite(reported[-1][1]) is None:
        step, value = reported[-1]
        return base.model_copy(
            update={
                "state": "non-finite",
                "rule": f"the entropy of step {step} is {value}: the run diverged",
                "latest_step": step,
                "latest_entropy": float(value) if value is not None else None,
            }
        )
    if len(rows) < MIN_POINTS or start is None or start <= 0:
        why = (
            f"{len(rows)} steps with a finite entropy, need {MIN_POINTS}"
            if len(rows) < MIN_POINTS
            else "the start entropy is 0, so relative entropy is undefined"
        )
        return base.model_copy(update={"rule": f"not enough data: {why}"})

    last_step, last_h = rows[-1]
    relative = last_h / start
    floor_h = floor * start
    halved = next((s for s, h in rows if h <= start / 2), None)
    trend = [(s, math.log(h)) for s, h in rows[-trend_points:] if h > 0]
    line = fit_line([float(s) for s, _ in trend], [y for _, y in trend])
    rate = se = t = crossing = half_life = None
    if line is not None:
        rate, se = -line.slope, line.se_slope
        t = rate / se if se > 0 else math.copysign(math.inf, rate) if rate else 0.0
        fitted_last = math.exp(line.predict(float(last_step)))
        if rate > 0:
            half_life = math.log(2) / rate
            if fitted_last > floor_h:
                crossing = last_step + math.log(fitted_last / floor_h) / rate
    result = base.model_copy(
        update={
            "enough_data": True,
            "latest_step": last_step,
            "latest_entropy": last_h,
            "relative": relative,
            "floor_entropy": floor_h,
            "decay_rate": rate,
            "decay_rate_se": se,
            "trend_points": len(trend),
            "half_life_steps": half_life,
            "halved_at_step": halved,
            "floor_crossing_step": crossing,
        }
    )
    state, rule = _decide(relative, floor, t, crossing, last_step, horizon, half_life)
    return result.model_copy(update={"state": state, "rule": rule})


def _decide(
    relative: float,
    floor: float,
    t: float | None,
    crossing: float | None,
    last_step: int,
    horizon: int,
    half_life: float | None,
) -> tuple[State, str]:
    """The first matching rule, in order: collapsed, exploding, declining, healthy."""
    if relative <= floor:
        return "collapsed", (
            f"entropy is {relative:.3g} of its start, at or below the floor ({floor} of start)"
        )
    if relative >= EXPLODING_RELATIVE:
        return "exploding", (
            f"entropy is {relative:.3g}x its start, at or above {EXPLODING_RELATIVE}x"
        )
    if (
        t is not None
        and t >= DECLINE_MIN_T
        and crossing is not None
        and crossing - last_step <= horizon
    ):
        sigmas = f"{t:.1f}" if t < 1000 else "over 1000"
        return "declining", (
            f"entropy halves every {half_life:.4g} steps (a decline {sigmas} standard errors "
            f"from flat); at this rate it crosses the floor ({floor} of start) near step "
            f"{crossing:.0f}, within the {horizon}-step horizon"
        )
    return "healthy", (
        f"entropy is {relative:.3g} of its start and no significant decline reaches the floor "
        f"({floor} of start) within {horizon} steps"
    )
