"""Step reports: built on the training thread (cheap: no I/O, no host-device sync), finished and
encoded on the reporter thread.

Tensor values stay tensors (detached) and the step's packed statistics stay packed until the
reporter thread turns them into numbers, so `Monitor.log` never waits for the device.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from entmon.wire.numbers import to_wire, wire_numbers
from entmon.wire.stats import INTEGER_STATS, STAT_NAMES

# Scalars given to Monitor.log under a statistic name of the wire table are report statistics;
# any other name goes to the report's free-form `user` section.
_STAT_NAMES = frozenset(STAT_NAMES)
_PLAIN = frozenset({float, int})  # nothing to detach


class PackedStats(Protocol):
    """A step's statistics still on the device (client.stats.StepAccumulator.pack())."""

    def unpack(self, tokenizer: Any = None) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class PendingReport:
    """A closed step waiting in the reporter's queue: values may still be tensors (detached),
    the statistics still packed on the device."""

    step: int
    rank: int
    world_size: int
    time: float  # unix time at log()
    control_version: int | None  # None: a driver, which takes no control
    scalars: dict[str, Any]  # given to log()
    packed: PackedStats | None = None


def build_report(
    step: int,
    rank: int,
    world_size: int,
    control_version: int | None,
    scalars: Mapping[str, Any],
    packed: PackedStats | None = None,
) -> PendingReport:
    """A report whose values may still be tensors; `finalize` makes it JSON-ready. Runs on the
    training thread: it only detaches tensors (so no autograd graph is kept alive)."""
    return PendingReport(
        step=int(step),
        rank=rank,
        world_size=world_size,
        time=time.time(),
        control_version=control_version,
        scalars={k: v if type(v) in _PLAIN else _detach(v) for k, v in scalars.items()},
        packed=packed,
    )


def finalize(
    report: PendingReport,
    *,
    client_drops: int = 0,
    tokenizer: Any = None,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    """Numbers only, non-finite values as strings (runs on the reporter thread: reading a
    tensor may wait for the device). Scalars given to `log` win over computed ones; names that
    are not report statistics go to `user`. A value that is not a number is left out and named
    in `problems`: one bad scalar does not cost the step its report."""
    out: dict[str, Any] = {
        "step": report.step,
        "rank": report.rank,
        "world_size": report.world_size,
        "time": report.time,
        "control_version": report.control_version,
    }
    stats: dict[str, Any] = {}
    user: dict[str, Any] = {}
    if report.packed is not None:
        computed = report.packed.unpack(tokenizer)
        stats.update(computed.get("stats", {}))
        user.update(computed.get("user", {}))
        if computed.get("histograms"):
            out["histograms"] = computed["histograms"]
        if computed.get("top_tokens"):
            out["top_tokens"] = computed["top_tokens"]
    for name, value in report.scalars.items():  # given to log(): they win
        (stats if name in _STAT_NAMES else user)[name] = value
    if client_drops:
        stats["client_drops"] = client_drops
    out["stats"] = _numbers(stats, problems, integer=INTEGER_STATS)
    out["user"] = _numbers(user, problems)
    for key in ("histograms", "top_tokens"):
        if key in out:
            out[key] = wire_numbers(out[key])
    return out


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # one, not one per call


def encode(report: dict[str, Any]) -> bytes:
    """One line of compact JSON (json escapes newlines inside strings)."""
    return _ENCODER.encode(report).encode()


def step_of(line: bytes) -> tuple[int, int]:
    """(rank, step) of an encoded report, for logs and tests."""
    doc = json.loads(line)
    return int(doc.get("rank", 0)), int(doc["step"])


def _numbers(
    values: dict[str, Any], problems: list[str] | None, integer: frozenset[str] = frozenset()
) -> dict[str, float | int | str]:
    out: dict[str, float | int | str] = {}
    for name, value in values.items():
        if type(value) is float and -math.inf < value < math.inf and name not in integer:
            out[name] = value  # the common case, kept cheap: close() may encode thousands
            continue
        if value is None:
            continue
        try:
            out[name] = _number(value, integer=name in integer)
        except (TypeError, ValueError, RuntimeError) as e:  # a string, a tensor of many values
            if problems is not None:
                problems.append(f"{name}={value!r:.60}: not a number ({type(e).__name__})")
    return out


def _detach(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach() if callable(detach) else value


def _number(value: Any, *, integer: bool) -> float | int | str:
    x = float(value)  # a 0-d tensor, numpy scalar or Python number
    if integer and math.isfinite(x):
        return int(x)
    return to_wire(x)  # type: ignore[no-any-return]
