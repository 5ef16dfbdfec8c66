"""Synthetic runs with known truth for the analysis tests (seeded, pure Python)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from monitor.api_models import StepPoint

A, B = 0.35, 1.0  # the law R = -A exp(H) + B; ceiling B - A = 0.65
H0, H_INF, TAU = 1.0, 0.1, 60.0  # entropy decays from H0 toward H_INF with time constant TAU


def entropy_curve(t: float) -> float:
    return H_INF + (H0 - H_INF) * math.exp(-t / TAU)


def law_reward(h: float) -> float:
    return -A * math.exp(h) + B


def law_run(steps: int, *, noise: float = 0.01, seed: int = 0) -> list[StepPoint]:
    """Entropy falling as in the paper's first steps, reward on the law plus Gaussian noise."""
    rng = random.Random(seed)
    return [
        point(t, entropy=h, reward=law_reward(h) + rng.gauss(0.0, noise))
        for t in range(steps)
        for h in [entropy_curve(t)]
    ]


def entropy_run(curve: Callable[[int], float], steps: int, **stats: float) -> list[StepPoint]:
    return [point(t, entropy=curve(t), **stats) for t in range(steps)]


def point(step: int, *, control_version: int | None = None, **stats: float | None) -> StepPoint:
    return StepPoint(step=step, ranks=1, control_version=control_version, stats=dict(stats))


def with_stats(points: Sequence[StepPoint], **stats: float | None) -> list[StepPoint]:
    return [p.model_copy(update={"stats": {**p.stats, **stats}}) for p in points]
