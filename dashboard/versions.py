"""Before and after a knob change: each control version's steps against the previous version's.

Pure functions over merged steps (API data). The comparison uses the same number of steps on
both sides (the previous version's last n against this version's first n), so a long history
does not drown a short new segment.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from dashboard.api import number


def segments(steps: Sequence[Mapping[str, Any]]) -> list[tuple[int, list[Mapping[str, Any]]]]:
    """(control version, its consecutive steps), in step order; steps without a version join
    the segment they are in."""
    out: list[tuple[int, list[Mapping[str, Any]]]] = []
    for point in steps:
        version = point.get("control_version")
        if out and (version is None or version == out[-1][0]):
            out[-1][1].append(point)
        elif version is not None:
            out.append((version, [point]))
    return out


def slope(points: Sequence[Mapping[str, Any]], stat: str) -> float | None:
    """Least-squares change of `stat` per step; None with fewer than two finite values."""
    xy = [(p["step"], v) for p in points if (v := number(p["stats"].get(stat))) is not None]
    xy = [(x, y) for x, y in xy if math.isfinite(y)]
    if len(xy) < 2:
        return None
    mx = sum(x for x, _ in xy) / len(xy)
    my = sum(y for _, y in xy) / len(xy)
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in xy) / sxx


def mean(points: Sequence[Mapping[str, Any]], stat: str) -> float | None:
    values = [v for p in points if (v := number(p["stats"].get(stat))) is not None]
    return sum(values) / len(values) if values else None


def started_with(
    audit: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]]
) -> int | None:
    """The newest control version requested before the run's first charted report (audit `when`
    against the step's `time`, the trainer's clock), or None.

    A client starts with the defaults (version 0) and learns the run's control from the answer to
    its first report, so a control set before training shows up as a switch one or two steps
    in: the run was started with it, it is not a change made during the run."""
    first = steps[0].get("time") if steps else None
    if first is None:
        return None
    before = [int(e["version"]) for e in audit if float(e["when"]) <= float(first)]
    return max(before, default=None)


def before_after(
    steps: Sequence[Mapping[str, Any]], *, started: int | None = None
) -> list[dict[str, Any]]:
    """A row per control version after the first: its entropy slope and mean reward over its
    first n steps against the previous version's last n. Versions up to `started` (see
    `started_with`) are where the run began, not a change: no row."""
    rows = []
    parts = segments(steps)
    for (old, before), (new, after) in itertools.pairwise(parts):
        if started is not None and new <= started:
            continue
        n = min(len(before), len(after))
        b, a = before[-n:], after[:n]
        rows.append({
            "version": f"v{old} → v{new}", "from step": after[0]["step"], "steps compared": n,
            "entropy slope before (/100 steps)": _per100(slope(b, "entropy")),
            "entropy slope after (/100 steps)": _per100(slope(a, "entropy")),
            "reward before": mean(b, "reward"), "reward after": mean(a, "reward"),
        })  # fmt: skip
    return rows


def _per100(value: float | None) -> float | None:
    return None if value is None else 100 * value
