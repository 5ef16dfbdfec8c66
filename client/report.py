"""Building step reports on the training thread: cheap, no I/O, no host-device sync.

Tensor values are kept as tensors (detached) and turned into numbers on the reporter thread, so
`Monitor.log` never waits for the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

# Statistic names the service's StepStats schema knows (tests/test_contract.py keeps them equal);
# any other scalar given to Monitor.log goes to the report's free-form `user` section.
REPORT_STATS = (
    "entropy", "logp_mean", "adv_mean", "adv_std", "cov_mean", "cov_std", "cov_max",
    "cov_top_concentration", "tokens", "candidates", "detached", "penalised",
    "abs_log_ratio_mean", "penalised_abs_log_ratio_mean", "ppo_clip_frac", "policy_loss",
    "reward", "response_length", "client_drops",
)  # fmt: skip
INTEGER_STATS = frozenset({"tokens", "candidates", "detached", "penalised", "client_drops"})


def build_report(
    step: int, rank: int, world_size: int, control_version: int | None, scalars: Mapping[str, Any]
) -> dict[str, Any]:
    """A report whose values may still be tensors; `finalize` makes it JSON-ready."""
    stats = {k: _detach(v) for k, v in scalars.items() if k in REPORT_STATS}
    user = {k: _detach(v) for k, v in scalars.items() if k not in REPORT_STATS}
    return {
        "step": int(step),
        "rank": rank,
        "world_size": world_size,
        "time": time.time(),
        "control_version": control_version,
        "stats": stats,
        "user": user,
    }


def finalize(report: dict[str, Any]) -> dict[str, Any]:
    """Numbers only (runs on the reporter thread: tensor -> float may wait for the device)."""
    report["stats"] = {
        k: _number(v, integer=k in INTEGER_STATS) for k, v in report["stats"].items()
    }
    report["user"] = {k: _number(v, integer=False) for k, v in report["user"].items()}
    return report


def _detach(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach() if callable(detach) else value


def _number(value: Any, *, integer: bool) -> float | int | str:
    x = float(value)  # a 0-d tensor, numpy scalar or Python number
    if integer and math.isfinite(x):
        return int(x)
    if math.isnan(x):
        return "NaN"  # strict JSON has no NaN; the service parses these strings back
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x
