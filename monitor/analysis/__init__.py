"""Entropy analytics of a run (pure functions over merged steps; rules in monitor/ANALYSIS.md):
the entropy-performance law and its predicted ceiling, collapse state, the theory check, and
intervention health. Every function answers "not enough data" instead of raising."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from monitor.analysis.collapse import (
    DEFAULT_FLOOR,
    DEFAULT_HORIZON,
    DEFAULT_TREND_POINTS,
    START_STEPS,
    STATES,
    Collapse,
    State,
    collapse,
    start_entropy,
)
from monitor.analysis.fitting import Result
from monitor.analysis.health import DEFAULT_HEALTH_STEPS, FLAGS, Health, HealthFlag, health
from monitor.analysis.law import (
    DEFAULT_FIT_STEPS,
    DEFAULT_SMOOTH,
    LawFit,
    TrackRecord,
    fit_law,
    track_record,
)
from monitor.analysis.theory import TheoryCheck, theory_check
from monitor.api_models import Control, StepPoint

__all__ = [
    "FLAGS",
    "START_STEPS",
    "STATES",
    "Analysis",
    "AnalysisParams",
    "Collapse",
    "Health",
    "HealthFlag",
    "LawFit",
    "State",
    "TheoryCheck",
    "TrackRecord",
    "analyse",
    "collapse",
    "fit_law",
    "health",
    "start_entropy",
    "theory_check",
    "track_record",
]


class AnalysisParams(BaseModel):
    """Knobs of the analysis; the API takes them as query parameters."""

    model_config = ConfigDict(extra="forbid")

    fit_steps: int = Field(
        DEFAULT_FIT_STEPS, ge=3, le=100_000, description="K: the early fit uses the first K steps"
    )
    smooth: int = Field(
        DEFAULT_SMOOTH, ge=1, le=1000, description="fit the law on means of blocks of this size"
    )
    floor: float = Field(
        DEFAULT_FLOOR, gt=0, lt=1, description="collapse floor, a fraction of the start entropy"
    )
    horizon: int = Field(
        DEFAULT_HORIZON, ge=1, le=10_000_000, description="declining: floor reached within steps"
    )
    trend_points: int = Field(
        DEFAULT_TREND_POINTS, ge=3, le=100_000, description="steps the decay rate is fitted on"
    )
    health_steps: int = Field(
        DEFAULT_HEALTH_STEPS, ge=1, le=100_000, description="steps a health flag must hold for"
    )


class Analysis(Result):
    run: str
    steps: int = Field(description="merged steps analysed")
    first_step: int | None
    last_step: int | None
    sampled: bool = Field(description="True when a long run was analysed on a sample of steps")
    note: str
    params: AnalysisParams
    law: LawFit
    track_record: TrackRecord
    collapse: Collapse
    theory: TheoryCheck
    health: Health


def analyse(
    run: str,
    points: Sequence[StepPoint],
    control: Control,
    params: AnalysisParams | None = None,
    *,
    sampled: bool = False,
) -> Analysis:
    """Every analysis of a run's merged steps (in step order) under its current control.

    `sampled` says the caller passed the run's first and last steps in full and a sample between
    (see Store.sampled_steps): the early fit and the start need the first steps, the trend and
    the health flags the last ones.
    """
    p = params or AnalysisParams()
    points = sorted(points, key=lambda q: q.step)
    return Analysis(
        run=run,
        steps=len(points),
        first_step=points[0].step if points else None,
        last_step=points[-1].step if points else None,
        sampled=sampled,
        note=(
            "a long run: its first and last steps in full, an even sample of steps between"
            if sampled
            else "every stored step"
        ),
        params=p,
        law=fit_law(points, smooth=p.smooth),
        track_record=track_record(points, fit_steps=p.fit_steps, smooth=p.smooth),
        collapse=collapse(points, floor=p.floor, horizon=p.horizon, trend_points=p.trend_points),
        theory=theory_check(points),
        health=health(points, control, steps=p.health_steps),
    )
