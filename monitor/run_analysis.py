"""A run's analysis read from the store: shared by the analysis API and the /metrics scrape."""

from __future__ import annotations

from monitor.analysis import START_STEPS, Analysis, AnalysisParams, analyse
from monitor.store import Store

DEFAULT_MAX_POINTS = 2000  # a long run is analysed on at most about this many sampled steps


async def run_analysis(
    store: Store, run: str, params: AnalysisParams, max_points: int = DEFAULT_MAX_POINTS
) -> Analysis:
    """Read a bounded window of the run (first and last steps in full, a sample between) and
    analyse it under the run's current control."""
    points, sampled = await store.sampled_steps(
        run,
        head=max(params.fit_steps, START_STEPS),
        tail=max(params.trend_points, params.health_steps) + 1,
        max_points=max_points,
    )
    return analyse(run, points, await store.control(run), params, sampled=sampled)
