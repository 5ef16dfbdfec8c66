"""Intervention health: is Clip-Cov or KL-Cov doing anything on this run?

Judged against the run's CURRENT control: a per-step loss mode is not stored. Steps that report
having applied another control version are left out (versions only grow, so the window is the
steps since the last change that carry a version, plus those that report none).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import Field

from monitor.analysis.fitting import Result, finite
from monitor.api_models import Control, StepPoint

DEFAULT_HEALTH_STEPS = 10
"""A flag needs its condition on each of the last 10 steps under the current control: one odd
step is not a misconfiguration."""

ON_POLICY_ABS_LOG_RATIO = 1e-3
"""Mean |logp - old_logp| at or below 1e-3 on the penalised tokens means the policy has not
moved since the rollout (on-policy): KL-Cov's penalty beta * |logp - old_logp| then has nothing
to hold back. Real drift of a second update is ~1e-2 or more (a PPO approximate KL of 1e-3
already means |log-ratio| ~ 4e-2); 1e-3 sits above fp32 recomputation noise."""

INFLATION_FACTOR = 2.0
"""Budget floor: the effective fraction (tokens detached or penalised over valid tokens) at
least twice the configured ratio means max(floor(ratio * N), 1) hit its floor of one token in
selection units of fewer than 1 / (2 * ratio) tokens: the floor, not the ratio, sets the budget."""

Flag = Literal["clip_cov_no_candidates", "kl_cov_on_policy", "budget_floor_inflation"]
FLAGS: tuple[Flag, ...] = ("clip_cov_no_candidates", "kl_cov_on_policy", "budget_floor_inflation")


class HealthFlag(Result):
    flag: Flag
    applicable: bool = Field(description="the current loss mode is one this flag watches")
    active: bool
    rule: str = Field(description="what was checked, on which steps, with the numbers")
    hint: str | None = Field(None, description="what to change, when active")
    steps: int = Field(0, description="steps the condition was checked on")
    value: float | None = Field(None, description="the measured quantity the rule compares")


class Health(Result):
    loss_mode: str
    control_version: int
    note: str
    flags: list[HealthFlag]


def current_window(points: Sequence[StepPoint], control: Control) -> list[StepPoint]:
    """The trailing steps that ran under the current control version (or report none)."""
    window: list[StepPoint] = []
    for p in reversed(points):
        if p.control_version is not None and p.control_version != control.version:
            break
        window.append(p)
    return window[::-1]


def _last_with(points: Sequence[StepPoint], n: int, *names: str) -> list[StepPoint]:
    """The last n points that carry every named statistic as a finite number."""
    picked = [p for p in points if all(finite(p.stats.get(k)) is not None for k in names)]
    return picked[-n:]


def _not_applicable(flag: Flag, why: str) -> HealthFlag:
    return HealthFlag(flag=flag, applicable=False, active=False, rule=why)


def _too_few(flag: Flag, got: int, n: int, what: str) -> HealthFlag:
    return HealthFlag(
        flag=flag,
        applicable=True,
        active=False,
        steps=got,
        rule=f"not enough data: {got} steps under the current control report {what}, need {n}",
    )


def clip_cov_no_candidates(window: Sequence[StepPoint], control: Control, n: int) -> HealthFlag:
    """Clip-Cov active and no token inside (clip_cov_lb, clip_cov_ub) on each of the last n
    steps: the bounds admit nothing, so Clip-Cov detaches nothing and is vanilla PPO."""
    flag: Flag = "clip_cov_no_candidates"
    if control.loss_mode != "clip_cov":
        return _not_applicable(flag, f"loss_mode is {control.loss_mode}, not clip_cov")
    steps = _last_with(window, n, "candidates")
    if len(steps) < n:
        return _too_few(flag, len(steps), n, "candidates")
    lb, ub = control.clip_cov_lb, control.clip_cov_ub
    most = max((float(p.stats["candidates"] or 0) for p in steps), default=0.0)
    cov_maxes = [c for p in steps if (c := finite(p.stats.get("cov_max"))) is not None]
    top = max(cov_maxes) if cov_maxes else None
    rule = f"candidates inside ({lb}, {ub}) on each of the last {n} steps: at most {most:.0f}"
    if most > 0:
        return HealthFlag(flag=flag, applicable=True, active=False, steps=n, rule=rule, value=top)
    if top is None or top <= lb:
        seen = f" (the largest covariance was {top:.3g})" if top is not None else ""
        hint = f"lower clip_cov_lb: no token's covariance exceeded {lb}{seen}"
    elif top >= ub:
        hint = (
            f"lower clip_cov_lb or raise clip_cov_ub: covariances reach {top:.3g} but none fell "
            f"inside ({lb}, {ub})"
        )
    else:
        hint = (
            "lower clip_cov_lb: the tokens inside the bounds were all PPO-clipped, and clipped "
            "tokens are never candidates"
        )
    return HealthFlag(
        flag=flag, applicable=True, active=True, steps=n, rule=rule, hint=hint, value=top
    )


def _tokens(p: StepPoint) -> float:
    return finite(p.stats.get("tokens")) or 0.0


def _log_ratio(p: StepPoint) -> float | None:
    value = finite(p.stats.get("penalised_abs_log_ratio_mean"))
    return value if value is not None else finite(p.stats.get("abs_log_ratio_mean"))


def kl_cov_on_policy(window: Sequence[StepPoint], control: Control, n: int) -> HealthFlag:
    """KL-Cov active and mean |log-ratio| on the penalised tokens ~0 on each of the last n steps:
    one update per rollout, so logp == old_logp and the penalty does nothing (ALGORITHM.md 4.4).
    Falls back to the mean |log-ratio| of all tokens when a step lacks the penalised one."""
    flag: Flag = "kl_cov_on_policy"
    if control.loss_mode != "kl_cov":
        return _not_applicable(flag, f"loss_mode is {control.loss_mode}, not kl_cov")
    steps = [p for p in window if _log_ratio(p) is not None][-n:]
    if len(steps) < n:
        return _too_few(flag, len(steps), n, "a mean |log-ratio|")
    largest = max(r for p in steps if (r := _log_ratio(p)) is not None)
    active = largest <= ON_POLICY_ABS_LOG_RATIO
    return HealthFlag(
        flag=flag,
        applicable=True,
        active=active,
        steps=n,
        value=largest,
        rule=(
            f"mean |logp - old_logp| on penalised tokens over the last {n} steps: at most "
            f"{largest:.3g} (on-policy at or below {ON_POLICY_ABS_LOG_RATIO:g})"
        ),
        hint=(
            "use several updates per rollout (ppo_epochs > 1 or several mini-batches per "
            "rollout) so logp drifts from old_logp, or switch to clip_cov: on-policy the "
            "penalty ppo_kl_coef * |logp - old_logp| is 0 and KL-Cov is plain unclipped "
            "policy gradient"
            if active
            else None
        ),
    )


def budget_floor_inflation(window: Sequence[StepPoint], control: Control, n: int) -> HealthFlag:
    """The fraction of tokens detached (Clip-Cov) or penalised (KL-Cov) is at least
    INFLATION_FACTOR times the configured ratio on each of the last n steps: the one-token floor
    of the budget dominates (ALGORITHM.md 5). With a ratio of 0, any selected token counts."""
    flag: Flag = "budget_floor_inflation"
    if control.loss_mode == "clip_cov":
        count, knob, verb = "detached", "clip_cov_ratio", "detached"
    elif control.loss_mode == "kl_cov":
        count, knob, verb = "penalised", "kl_cov_ratio", "penalised"
    else:
        return _not_applicable(flag, f"loss_mode is {control.loss_mode}: no token budget")
    ratio = float(getattr(control, knob))
    steps = [p for p in window if finite(p.stats.get(count)) is not None and _tokens(p) > 0][-n:]
    if len(steps) < n:
        return _too_few(flag, len(steps), n, f"{count} and tokens")
    effective = [float(p.stats[count] or 0) / _tokens(p) for p in steps]
    inflated: Callable[[float], bool] = (
        (lambda e: e >= INFLATION_FACTOR * ratio) if ratio > 0 else (lambda e: e > 0)
    )
    active = all(inflated(e) for e in effective)
    typical = statistics.median(effective)
    rule = (
        f"fraction of tokens {verb} over the last {n} steps: median {typical:.3g}, least "
        f"{min(effective):.3g}, against {knob} = {ratio:g} (inflated at {INFLATION_FACTOR:g}x)"
    )
    hint = None
    if active:
        per_unit = f" = {math.floor(1 / ratio)}" if ratio > 0 else ""
        hint = (
            f"the budget max(floor({knob} * N), 1) never drops below one token per selection "
            f"unit (micro-batch per rank), so {typical:.3g} of tokens are {verb} instead of "
            f"{ratio:g}: units hold fewer than 1 / {knob}{per_unit} tokens; use larger "
            "micro-batches or the global selection scope"
        )
    return HealthFlag(
        flag=flag, applicable=True, active=active, steps=n, rule=rule, hint=hint, value=typical
    )


def health(points: Sequence[StepPoint], control: Control, *, steps: int) -> Health:
    window = current_window(points, control)
    return Health(
        loss_mode=control.loss_mode,
        control_version=control.version,
        note=(
            f"judged against the current control (version {control.version}, "
            f"{control.loss_mode}): a per-step loss mode is not stored; {len(window)} trailing "
            "steps ran under this version or report none"
        ),
        flags=[
            clip_cov_no_candidates(window, control, steps),
            kl_cov_on_policy(window, control, steps),
            budget_floor_inflation(window, control, steps),
        ],
    )
