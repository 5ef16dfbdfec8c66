"""The live control knobs of a run, their defaults and validation rules.

Pure Python: the service validates a PUT with these rules and the client validates what the
service sends back with the same rules, so a malformed control never reaches the loss.
Knob names follow verl (`actor.policy_loss` config); defaults are the paper's values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

LOSS_MODES = ("vanilla", "clip_cov", "kl_cov")

DEFAULT_LOSS_MODE = "vanilla"
DEFAULT_CLIP_COV_RATIO = 2e-4  # fraction of valid tokens, not percent
DEFAULT_CLIP_COV_LB = 1.0
DEFAULT_CLIP_COV_UB = 5.0
DEFAULT_KL_COV_RATIO = 2e-3  # fraction of valid tokens (the authors' repo uses percent: /100)
DEFAULT_PPO_KL_COEF = 1.0  # paper; verl's config default is 0.1
DEFAULT_CLIP_RATIO_LOW = 0.2
DEFAULT_CLIP_RATIO_HIGH = 0.2
MAX_CLIP_RATIO = 10.0

DEFAULTS: dict[str, Any] = {
    "loss_mode": DEFAULT_LOSS_MODE,
    "clip_cov_ratio": DEFAULT_CLIP_COV_RATIO,
    "clip_cov_lb": DEFAULT_CLIP_COV_LB,
    "clip_cov_ub": DEFAULT_CLIP_COV_UB,
    "kl_cov_ratio": DEFAULT_KL_COV_RATIO,
    "ppo_kl_coef": DEFAULT_PPO_KL_COEF,
    "clip_ratio_low": DEFAULT_CLIP_RATIO_LOW,
    "clip_ratio_high": DEFAULT_CLIP_RATIO_HIGH,
}
KNOBS = tuple(DEFAULTS)


def control_errors(knobs: Mapping[str, Any]) -> list[str]:
    """Every problem with a full set of knobs, each naming the field; empty when valid."""
    errors = [f"{name}: unknown knob" for name in knobs if name not in DEFAULTS]
    errors += [f"{name}: missing" for name in KNOBS if name not in knobs]
    if errors:
        return errors
    if knobs["loss_mode"] not in LOSS_MODES:
        errors.append(f"loss_mode: must be one of {', '.join(LOSS_MODES)}")
    numbers = {}
    for name in KNOBS[1:]:
        value = knobs[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            errors.append(f"{name}: must be a finite number, got {value!r}")
        else:
            numbers[name] = float(value)
    for name in ("clip_cov_ratio", "kl_cov_ratio"):
        if name in numbers and not 0.0 <= numbers[name] <= 1.0:
            errors.append(f"{name}: must be a fraction in [0, 1], got {numbers[name]}")
    if "ppo_kl_coef" in numbers and numbers["ppo_kl_coef"] < 0:
        errors.append(f"ppo_kl_coef: must be >= 0, got {numbers['ppo_kl_coef']}")
    for name in ("clip_ratio_low", "clip_ratio_high"):
        if name in numbers and not 0.0 < numbers[name] <= MAX_CLIP_RATIO:
            errors.append(f"{name}: must be in (0, {MAX_CLIP_RATIO}], got {numbers[name]}")
    lb, ub = numbers.get("clip_cov_lb"), numbers.get("clip_cov_ub")
    if lb is not None and ub is not None and not lb < ub:
        errors.append(f"clip_cov_lb: must be below clip_cov_ub ({lb} >= {ub})")
    return errors
