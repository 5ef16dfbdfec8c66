"""The live loss knobs as one small immutable object.

Field names are verl's (`actor.policy_loss` config and `actor.clip_ratio_*`), defaults and
validation rules come from `monitor.control_rules`, the single definition the service uses too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from client.errors import ControlError
from monitor.control_rules import (
    DEFAULT_CLIP_COV_LB,
    DEFAULT_CLIP_COV_RATIO,
    DEFAULT_CLIP_COV_UB,
    DEFAULT_CLIP_RATIO_HIGH,
    DEFAULT_CLIP_RATIO_LOW,
    DEFAULT_KL_COV_RATIO,
    DEFAULT_LOSS_MODE,
    DEFAULT_PPO_KL_COEF,
    DEFAULTS,
    control_errors,
)


@dataclass(frozen=True, kw_only=True)
class Control:
    """Which policy loss to use and its knobs; `version` is the service's control version.

    Ratios are FRACTIONS of the valid tokens (2e-4 means 0.02%), as in verl; the authors'
    repository takes percentages for KL-Cov. Construction validates and raises `ControlError`.
    """

    loss_mode: str = DEFAULT_LOSS_MODE
    clip_cov_ratio: float = DEFAULT_CLIP_COV_RATIO
    clip_cov_lb: float = DEFAULT_CLIP_COV_LB
    clip_cov_ub: float = DEFAULT_CLIP_COV_UB
    kl_cov_ratio: float = DEFAULT_KL_COV_RATIO
    ppo_kl_coef: float = DEFAULT_PPO_KL_COEF
    clip_ratio_low: float = DEFAULT_CLIP_RATIO_LOW
    clip_ratio_high: float = DEFAULT_CLIP_RATIO_HIGH
    version: int = 0

    def __post_init__(self) -> None:
        errors = control_errors(self.knobs())
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            errors.append(f"version: must be an integer >= 0, got {self.version!r}")
        if errors:
            raise ControlError("invalid control: " + "; ".join(errors))

    @classmethod
    def from_wire(cls, mapping: Mapping[str, Any]) -> Control:
        """A control from the service's JSON; absent knobs take their defaults.

        Raises `ControlError` naming every unknown or invalid field at once.
        """
        names = {f.name for f in fields(cls)}
        unknown = [f"{k}: unknown field" for k in mapping if k not in names]
        if unknown:
            raise ControlError("invalid control: " + "; ".join(unknown))
        knobs = {**DEFAULTS, **{k: v for k, v in mapping.items() if k != "version"}}
        return cls(**knobs, version=mapping.get("version", 0))

    def knobs(self) -> dict[str, Any]:
        """The eight knobs without the version."""
        return {k: v for k, v in asdict(self).items() if k != "version"}

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)
