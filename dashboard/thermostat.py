"""The thermostat as the dashboard shows it: its target as a line on the entropy chart, which
control changes it made, and the schedule a person types in the Control page's form."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

WHO = "thermostat"  # the audit's `who` of a change the thermostat wrote
DEFAULT_SCHEDULE = "0:0.8, 300:0.1"  # a fraction of the start entropy, falling (THERMOSTAT.md)


@dataclass(frozen=True)
class TargetLine:
    """The target in nats at `steps` (the band's edges where it has one)."""

    steps: list[int]
    values: list[float]
    band: float | None = None

    def edges(self) -> tuple[list[float], list[float]] | None:
        if not self.band:
            return None
        band = self.band
        return [v * (1 - band) for v in self.values], [v * (1 + band) for v in self.values]


def _at(points: Sequence[Sequence[float]], step: float) -> float:
    """Linear between the points, flat outside them (law.Target.at)."""
    if step <= points[0][0]:
        return float(points[0][1])
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if step <= s1:
            return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))
    return float(points[-1][1])


def target_line(thermostat: Mapping[str, Any] | None, first: int, last: int) -> TargetLine | None:
    """The target over [first, last]; None when the thermostat is off or a target relative to
    the start entropy has no start yet."""
    if not thermostat or thermostat.get("status", "off") == "off":
        return None
    settings = thermostat.get("settings") or {}
    target = settings.get("target") or {}
    points = target.get("points") or []
    if not points or last < first:
        return None
    scale = 1.0
    if target.get("of_start"):
        start = thermostat.get("start_entropy")
        if not isinstance(start, int | float):
            return None
        scale = float(start)
    steps = sorted({first, last, *(int(s) for s, _ in points if first < s < last)})
    return TargetLine(steps, [_at(points, s) * scale for s in steps], settings.get("band"))


def thermostat_versions(audit: Sequence[Mapping[str, Any]]) -> set[int]:
    """The control versions the thermostat wrote (the others are a person's)."""
    return {int(e["version"]) for e in audit if e.get("who") == WHO}


def parse_schedule(text: str) -> list[list[float]]:
    """ "0:0.8, 300:0.1" -> [[0, 0.8], [300, 0.1]]; one bare number is a constant target.
    ValueError names what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("target: enter a value, or step:value pairs such as 0:0.8, 300:0.1")
    if ":" not in text:
        return [[0, _positive(text)]]
    points: list[list[float]] = []
    for part in text.split(","):
        step, sep, value = part.partition(":")
        if not sep:
            raise ValueError(f"target: {part.strip()!r} is not step:value")
        try:
            s = int(step)
        except ValueError:
            raise ValueError(f"target: step {step.strip()!r} is not a whole number") from None
        if s < 0 or (points and s <= points[-1][0]):
            raise ValueError(f"target: steps must be >= 0 and increase, got {s}")
        points.append([s, _positive(value)])
    return points


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"target: {text.strip()!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"target: values must be positive and finite, got {value}")
    return value


def format_schedule(points: Sequence[Sequence[float]]) -> str:
    if len(points) == 1:
        return f"{points[0][1]:g}"
    return ", ".join(f"{int(s)}:{v:g}" for s, v in points)
