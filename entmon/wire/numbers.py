"""How non-finite numbers travel: strict JSON has no NaN or infinity, so they are written as the
strings "NaN", "Infinity" and "-Infinity" (never dropped: a NaN entropy means the run diverged),
and read back as floats."""

from __future__ import annotations

import math
from typing import Any, Literal

NONFINITE_STRINGS = ("NaN", "Infinity", "-Infinity")
NonFinite = Literal["NaN", "Infinity", "-Infinity"]  # the same strings, as a type for schemas


def to_wire(value: Any) -> Any:
    """A non-finite float as its string; anything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def from_wire(value: Any) -> Any:
    """ "NaN", "Infinity", "-Infinity" as floats; anything else unchanged."""
    return float(value) if isinstance(value, str) and value in NONFINITE_STRINGS else value


def wire_numbers(value: Any) -> Any:
    """`to_wire` applied through dicts, lists and tuples (tuples come back as lists)."""
    if isinstance(value, float):
        return to_wire(value)
    if isinstance(value, dict):
        return {k: wire_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wire_numbers(v) for v in value]
    return value
