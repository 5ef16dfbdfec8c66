"""The live control knobs of a run: ONE table, from which everything else is derived.

The client's `Control`, the service's request and response models and their validation, the
control gauges and the dashboard's form all read `KNOBS`. Adding a knob is one row here plus the
loss code that uses it (tests/test_contract.py lists where each knob name may occur).
Names follow verl (`actor.policy_loss` config and `actor.clip_ratio_*`); defaults are the paper's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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
DEFAULT_ENTROPY_COEFF = 0.0  # off, as in verl's config and the paper's runs
MAX_CLIP_RATIO = 10.0
MAX_ENTROPY_COEFF = 1.0  # the bonus then outweighs a typical policy loss many times over


@dataclass(frozen=True, kw_only=True)
class Knob:
    """One knob. A numeric knob is a finite float within [lo, hi] (`lo_open`: lo excluded);
    a knob with `choices` is one of them. `modes` are the loss modes it acts in (empty: all).
    `step` and `fmt` are for input widgets. `raises_entropy`: raising it raises the policy's
    entropy (more tokens held back, a stronger hold, more room to rise, a larger bonus), so the
    thermostat may drive it (monitor/thermostat/law.py)."""

    name: str
    default: float | str
    label: str
    help: str
    unit: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    step: float = 0.1
    fmt: str = "%.4f"
    raises_entropy: bool = False

    @property
    def numeric(self) -> bool:
        return not self.choices

    def errors(self, value: Any) -> list[str]:
        """What is wrong with `value` for this knob alone, naming the knob; empty when valid."""
        if self.choices:
            if value not in self.choices:
                return [f"{self.name}: must be one of {', '.join(self.choices)}, got {value!r}"]
            return []
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return [f"{self.name}: must be a finite number, got {value!r}"]
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and value > self.hi
        if below or above:
            return [f"{self.name}: must be in {self.interval()}, got {float(value)}"]
        return []

    def interval(self) -> str:
        """The valid range as text, e.g. "[0.0, 1.0]" or "(0.0, 10.0]"."""
        left = "(-inf" if self.lo is None else f"{'(' if self.lo_open else '['}{self.lo!r}"
        right = "inf)" if self.hi is None else f"{self.hi!r}]"
        return f"{left}, {right}"


KNOBS: tuple[Knob, ...] = (
    Knob(
        name="loss_mode", default=DEFAULT_LOSS_MODE, choices=LOSS_MODES, label="Loss mode",
        help="vanilla PPO/GRPO, Clip-Cov (detach a few high-covariance tokens) or KL-Cov "
        "(penalise the top-k by covariance)",
    ),
    Knob(
        name="clip_cov_ratio", default=DEFAULT_CLIP_COV_RATIO, lo=0.0, hi=1.0,
        unit="fraction of tokens", modes=("clip_cov",), step=1e-4, fmt="%.6f", raises_entropy=True,
        label="Clip-Cov ratio (fraction of tokens detached)",
        help="Clip-Cov detaches this fraction of the valid tokens, drawn among the candidates",
    ),
    Knob(
        name="clip_cov_lb", default=DEFAULT_CLIP_COV_LB, modes=("clip_cov",), step=0.5,
        fmt="%.3f", label="Clip-Cov lower covariance bound",
        help="a Clip-Cov candidate's covariance lies strictly between the two bounds",
    ),
    Knob(
        name="clip_cov_ub", default=DEFAULT_CLIP_COV_UB, modes=("clip_cov",), step=0.5,
        fmt="%.3f", label="Clip-Cov upper covariance bound",
        help="a Clip-Cov candidate's covariance lies strictly between the two bounds",
    ),
    Knob(
        name="kl_cov_ratio", default=DEFAULT_KL_COV_RATIO, lo=0.0, hi=1.0,
        unit="fraction of tokens", modes=("kl_cov",), step=1e-3, fmt="%.6f", raises_entropy=True,
        label="KL-Cov ratio k (fraction of tokens penalised)",
        help="KL-Cov penalises this fraction of the valid tokens, the highest covariances",
    ),
    Knob(
        name="ppo_kl_coef", default=DEFAULT_PPO_KL_COEF, lo=0.0, modes=("kl_cov",),
        raises_entropy=True,
        label="KL-Cov beta (ppo_kl_coef)",
        help="weight of |log-ratio| on the tokens KL-Cov penalises",
    ),
    Knob(
        name="clip_ratio_low", default=DEFAULT_CLIP_RATIO_LOW, lo=0.0, lo_open=True,
        hi=MAX_CLIP_RATIO, step=0.05, label="PPO clip eps_low",
        help="the importance ratio is clipped below at 1 - eps_low",
    ),
    Knob(
        name="clip_ratio_high", default=DEFAULT_CLIP_RATIO_HIGH, lo=0.0, lo_open=True,
        hi=MAX_CLIP_RATIO, step=0.05, label="PPO clip eps_high", raises_entropy=True,
        help="the importance ratio is clipped above at 1 + eps_high (clip-higher: raise it)",
    ),
    Knob(
        name="entropy_coeff", default=DEFAULT_ENTROPY_COEFF, lo=0.0, hi=MAX_ENTROPY_COEFF,
        step=1e-3, fmt="%.5f", raises_entropy=True, label="Entropy bonus (entropy_coeff)",
        help="the loss subtracts entropy_coeff x the mean token entropy (verl's "
        "actor.entropy_coeff); 0 is off. Needs the entropy passed to policy_loss, else a "
        "score-function estimate on log_prob is used (client/entropy_bonus.py)",
    ),
)  # fmt: skip

KNOB_BY_NAME: dict[str, Knob] = {k.name: k for k in KNOBS}
THERMOSTAT_KNOB = "entropy_coeff"  # the knob the thermostat drives unless told: it has the
# authority the Cov ratios lack on the toy (monitor/thermostat/THERMOSTAT.md)
KNOB_NAMES: tuple[str, ...] = tuple(KNOB_BY_NAME)
NUMERIC_KNOBS: tuple[Knob, ...] = tuple(k for k in KNOBS if k.numeric)
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KNOBS}
# Rules between knobs: (first, second) means first < second.
ORDERED: tuple[tuple[str, str], ...] = (("clip_cov_lb", "clip_cov_ub"),)


def control_errors(knobs: Mapping[str, Any]) -> list[str]:
    """Every problem with a full set of knobs, each naming the field; empty when valid."""
    errors = [f"{name}: unknown knob" for name in knobs if name not in KNOB_BY_NAME]
    errors += [f"{name}: missing" for name in KNOB_NAMES if name not in knobs]
    if errors:
        return errors
    for knob in KNOBS:
        errors += knob.errors(knobs[knob.name])
    for low, high in ORDERED:
        lo, hi = knobs[low], knobs[high]
        if not (KNOB_BY_NAME[low].errors(lo) or KNOB_BY_NAME[high].errors(hi)) and not lo < hi:
            errors.append(f"{low}: must be below {high} ({lo} >= {hi})")
    return errors
