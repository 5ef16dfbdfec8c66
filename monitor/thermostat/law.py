"""The thermostat's control law: one decision per merged step, pure (no Redis, no I/O).

`decide(settings, state, step)` reads one merged step and returns the knob value to write (or
None), the next state and a reason with the numbers. THERMOSTAT.md beside this file states the
law, its defaults and the measurements behind them. In short, with u = ln(knob value):

    e   = ln(T / H)            log error, > 0 when entropy is too low
    du  = kp * (e - e_prev) + ki * dt * e + kff * (ln cov - ln cov_prev)   (velocity form)
    u  <- clamp(u + clamp(du, +-max_step), ln floor, ln upper)

H, T and cov are moving averages over the steps (`smoothing`) of the entropy, the target (of
step + lead) and the mean covariance; dt is the number of steps since the last decision (the law
decides only on steps that ran the latest control version).

Velocity form is the anti-windup: the integral lives in u itself, so a knob held at a bound
stops integrating. A knob at or below `floor` (0 included) that must rise re-enters at `floor`,
so there is no dead zone at 0; one that must fall below `floor` goes to `lower`. The guard cuts
the knob fast (past the rate limit) when entropy overshoots the band or the run is exploding.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from entmon.wire import knobs as wire_knobs

Knob = str
"""A knob of the control table (entmon/wire/knobs.py) that the thermostat may drive."""

KNOBS: tuple[Knob, ...] = tuple(k.name for k in wire_knobs.KNOBS if k.raises_entropy)
"""The table's knobs marked `raises_entropy`: raising each raises entropy (more tokens held back,
a stronger penalty on them, a higher clip bound for rising tokens, a larger bonus), so the law has
one sign for all."""

LOSS_MODE: dict[Knob, str | None] = {
    k.name: (k.modes[0] if k.modes else None) for k in wire_knobs.KNOBS if k.raises_entropy
}
"""The loss mode a knob acts through (None: it acts in every mode)."""

MODE_KNOB = "loss_mode"
"""The control's knob that selects the loss mode (engaged with a knob of LOSS_MODE)."""


def acting_value(knob: Knob, lower: float, knobs: Mapping[str, Any]) -> float:
    """The knob's value as the loss sees it in the control `knobs`: its setting when its loss
    mode is engaged (or it acts in every mode), else `lower` (it does nothing: a ratio of a
    mode that is off acts as 0, so raising it re-enters at the floor, without a dead zone)."""
    mode = LOSS_MODE[knob]
    if mode is not None and knobs.get(MODE_KNOB) != mode:
        return lower
    return float(knobs[knob])


def knob_changes(knob: Knob, knobs: Mapping[str, Any], value: float) -> dict[str, Any]:
    """The control changes that set `knob` to `value` and engage the loss mode it acts in."""
    changes: dict[str, Any] = {knob: value}
    mode = LOSS_MODE[knob]
    if mode is not None and knobs.get(MODE_KNOB) != mode:
        changes[MODE_KNOB] = mode
    return changes


DEFAULT_UPPER: dict[Knob, float] = {
    "kl_cov_ratio": 1.0,
    "clip_cov_ratio": 1.0,
    "ppo_kl_coef": 10.0,
    "clip_ratio_high": 1.0,
    "entropy_coeff": 0.5,
}

DEFAULT_FLOOR_FRACTION = 0.03
"""floor = 3% of upper unless set: low enough to be nearly off, high enough that a knob re-entering
from 0 reaches a useful value in a few rate-limited decisions (ln 100 / max_step)."""

Mode = Literal["running", "paused"]
Action = Literal["set", "hold", "skip", "wait", "guard", "pause", "paused"]

MAX_DT = 4
"""Steps integrated at most per decision: a decision normally follows the last one by 1 step (no
change written) or 2 (a change, then a step that ran the older version)."""

START_STEPS = 5
"""The start entropy is the median of the first 5 finite entropies (monitor/analysis/collapse.py
uses the same definition)."""


class SettingsError(ValueError):
    """Invalid thermostat settings; `field` names the offending one (dotted for nested)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _finite(name: str, value: object, *, positive: bool = False, low: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingsError(name, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SettingsError(name, f"must be > 0, got {value!r}")
    if low is not None and value < low:
        raise SettingsError(name, f"must be >= {low}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Target:
    """Entropy target: points (step, value) linearly interpolated and held flat outside them.

    One point is a constant target. `of_start`: the values are fractions of the run's start
    entropy, else nats. Build one with `absolute`, `fraction` or `schedule`.
    """

    points: tuple[tuple[int, float], ...]
    of_start: bool = False

    def __post_init__(self) -> None:
        if not self.points:
            raise SettingsError("target.points", "needs at least one (step, value) point")
        last = -1
        for i, point in enumerate(self.points):
            if not isinstance(point, tuple) or len(point) != 2:
                raise SettingsError(f"target.points[{i}]", f"must be (step, value), got {point!r}")
            step, value = point
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise SettingsError(f"target.points[{i}].step", f"must be an int >= 0: {step!r}")
            if step <= last:
                raise SettingsError(f"target.points[{i}].step", "steps must increase")
            last = step
            _finite(f"target.points[{i}].value", value, positive=True)

    @classmethod
    def absolute(cls, nats: float) -> Target:
        return cls(points=((0, nats),))

    @classmethod
    def fraction(cls, of_start: float) -> Target:
        return cls(points=((0, of_start),), of_start=True)

    @classmethod
    def schedule(cls, points: list[tuple[int, float]], *, of_start: bool = False) -> Target:
        return cls(points=tuple((int(s), float(v)) for s, v in points), of_start=of_start)

    @property
    def kind(self) -> str:
        if len(self.points) > 1:
            return "schedule"
        return "fraction" if self.of_start else "absolute"

    def at(self, step: float, start_entropy: float | None) -> float | None:
        """The target in nats at `step`; None while a relative target lacks the start."""
        scale = 1.0
        if self.of_start:
            if start_entropy is None:
                return None
            scale = start_entropy
        pts = self.points
        if step <= pts[0][0]:
            return pts[0][1] * scale
        for (s0, v0), (s1, v1) in itertools.pairwise(pts):
            if step <= s1:
                return (v0 + (v1 - v0) * (step - s0) / (s1 - s0)) * scale
        return pts[-1][1] * scale

    def describe(self) -> str:
        unit = " x start" if self.of_start else " nats"
        if len(self.points) == 1:
            return f"{self.points[0][1]:g}{unit}"
        return " -> ".join(f"{v:g}@{s}" for s, v in self.points) + unit


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What a person sets. Gains act on ln(knob) per unit of ln-entropy error (THERMOSTAT.md).

    band: optional tolerance, a fraction of the target: errors inside it are not acted on.
    floor: the smallest positive value the multiplicative law uses; a knob below it (0) that
    must rise re-enters there, one that must fall under it goes to `lower`.
    lead: aim at the target of this many steps ahead. 0 by default: without a prediction of
    H, aiming at the target of the step that will run the decision (2 steps ahead through the
    service) biases the entropy low on a falling schedule by lead x its slope (measured on the
    toy: -3% to -4%); the integral already follows a ramp without steady error.
    min_change: a relative change smaller than this is not written (no version churn).
    guard_margin: overshoot above target * (1 + max(band, guard_margin)) cuts the knob by
    `guard_cut` (multiplicative, past the rate limit); `exploding` sets it to `lower`.
    feedforward: gain on the change of ln(mean covariance) (dH ~ -eta Cov: the bonus that
    cancels the drift scales with Cov); 0 turns it off.
    smoothing: weight of the newest step in the moving averages of ln H and of the covariance
    the law acts on (1: no smoothing). A step's entropy is measured on that step's prompts
    only, so it scatters by several percent around the policy's; the average sees every step,
    also those the law does not act on.
    """

    target: Target
    knob: Knob = wire_knobs.THERMOSTAT_KNOB
    lower: float = 0.0
    upper: float | None = None  # None: DEFAULT_UPPER[knob]
    floor: float | None = None  # None: upper * DEFAULT_FLOOR_FRACTION
    band: float | None = None
    kp: float = 6.0
    ki: float = 0.5
    max_step: float = 0.7
    lead: int = 0
    min_change: float = 0.02
    guard_margin: float = 0.25
    guard_cut: float = 0.5
    feedforward: float = 0.0
    smoothing: float = 0.5
    start_steps: int = START_STEPS

    def __post_init__(self) -> None:
        if not isinstance(self.target, Target):
            raise SettingsError("target", f"must be a Target, got {type(self.target).__name__}")
        if self.knob not in KNOBS:
            raise SettingsError("knob", f"must be one of {', '.join(KNOBS)}, got {self.knob!r}")
        _finite("lower", self.lower, low=0.0)
        if self.upper is not None:
            _finite("upper", self.upper, positive=True)
            if self.upper <= self.lower:
                raise SettingsError("upper", f"must be > lower ({self.lower}), got {self.upper}")
        if self.floor is not None:
            _finite("floor", self.floor, positive=True)
            if not self.floor < self.upper_bound:
                raise SettingsError("floor", f"must be < upper ({self.upper_bound})")
            if self.floor < self.lower:
                raise SettingsError("floor", f"must be >= lower ({self.lower})")
        if self.band is not None:
            _finite("band", self.band, positive=True)
            if self.band >= 1:
                raise SettingsError(
                    "band", f"is a fraction of the target, must be < 1: {self.band}"
                )
        for name in ("kp", "ki", "feedforward", "min_change", "guard_margin"):
            _finite(name, getattr(self, name), low=0.0)
        _finite("max_step", self.max_step, positive=True)
        _finite("guard_cut", self.guard_cut, positive=True)
        _finite("smoothing", self.smoothing, positive=True)
        if self.smoothing > 1:
            raise SettingsError("smoothing", f"must be in (0, 1], got {self.smoothing}")
        if self.guard_cut >= 1:
            raise SettingsError("guard_cut", f"must be < 1 (a cut), got {self.guard_cut}")
        for name in ("lead", "start_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingsError(name, f"must be an int >= 0, got {value!r}")
        if self.start_steps < 1:
            raise SettingsError("start_steps", "must be >= 1")

    @property
    def upper_bound(self) -> float:
        return self.upper if self.upper is not None else DEFAULT_UPPER[self.knob]

    @property
    def floor_value(self) -> float:
        floor = self.floor if self.floor is not None else self.upper_bound * DEFAULT_FLOOR_FRACTION
        return max(floor, self.lower)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = {"points": [list(p) for p in self.target.points],
                       "of_start": self.target.of_start}  # fmt: skip
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Settings from JSON; unknown fields and bad values raise SettingsError naming them."""
        if not isinstance(data, dict):
            raise SettingsError("settings", "must be an object")
        names = set(cls.__dataclass_fields__)
        for key in data:
            if key not in names:
                raise SettingsError(key, "unknown field")
        raw = data.get("target")
        if not isinstance(raw, dict) or "points" not in raw:
            raise SettingsError("target", "must be an object with points [[step, value], ...]")
        points = raw["points"]
        if not isinstance(points, list):
            raise SettingsError("target.points", "must be a list of [step, value]")
        pts = []
        for i, p in enumerate(points):
            if not isinstance(p, list | tuple) or len(p) != 2:
                raise SettingsError(f"target.points[{i}]", f"must be [step, value], got {p!r}")
            pts.append((p[0], p[1]))
        target = Target(points=tuple(pts), of_start=bool(raw.get("of_start", False)))
        return cls(**{**data, "target": target})


@dataclass(frozen=True, kw_only=True)
class State:
    """What the thermostat remembers between steps (JSON round trip: `to_dict`/`from_dict`)."""

    mode: Mode = "running"
    reason: str = ""  # why paused
    u: float | None = None  # ln of the commanded knob value (None: not yet commanded)
    last_error: float | None = None  # e at the last decision (velocity form)
    last_step: int | None = None  # step of the last decision
    last_cov: float | None = None  # smoothed covariance at the last decision (feed-forward)
    log_h: float | None = None  # moving average of ln H over every finite step
    log_t: float | None = None  # the same moving average of ln target (no lag bias on a ramp)
    cov: float | None = None  # moving average of the mean covariance
    start: tuple[float, ...] = ()  # the first finite entropies, until start_steps
    decisions: int = 0  # knob changes written

    @classmethod
    def starting(cls, start_entropy: float | None, settings: Settings) -> State:
        """A fresh state; pass the run's start entropy (the analysis's) when the thermostat is
        enabled mid-run, so a relative target refers to the run's start, not to the first
        steps the thermostat sees."""
        if start_entropy is None:
            return cls()
        return cls(start=(float(start_entropy),) * settings.start_steps)

    def start_entropy(self, settings: Settings) -> float | None:
        if len(self.start) < settings.start_steps:
            return None
        return statistics.median(self.start)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = list(self.start)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        names = set(cls.__dataclass_fields__)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown thermostat state fields: {sorted(unknown)}")
        return cls(**{**data, "start": tuple(float(x) for x in data.get("start", ()))})


@dataclass(frozen=True, kw_only=True)
class StepInput:
    """One merged step as the thermostat sees it."""

    step: int
    entropy: float
    knob_value: float  # the knob's value in the control the step ran
    ran_latest: bool = True  # the step ran the latest control version
    exploding: bool = False  # monitor.analysis.collapse state
    non_finite: bool = False  # any other non-finite statistic the service flags
    cov_mean: float | None = None


@dataclass(frozen=True)
class Decision:
    value: float | None  # the knob value to write; None: no change
    state: State
    reason: str
    action: Action
    target: float | None = None  # nats, at step + lead
    error: float | None = None  # ln(target / H)


def resume(state: State) -> State:
    """Running again after a pause or a person's override: the next decision starts from the
    control's current knob value (no jump) and a fresh error history."""
    return replace(state, mode="running", reason="", u=None, last_error=None, last_step=None,
                   last_cov=None)  # fmt: skip


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def decide(settings: Settings, state: State, step: StepInput) -> Decision:
    """One decision on one merged step (see the module docstring)."""
    s = settings
    if state.mode == "paused":
        return Decision(None, state, f"paused: {state.reason}", "paused")
    H = step.entropy
    if step.non_finite or not math.isfinite(H):
        why = (
            f"non-finite entropy at step {step.step} ({H})"
            if not math.isfinite(H)
            else (f"non-finite statistics at step {step.step}")
        )
        return Decision(None, replace(state, mode="paused", reason=why), f"paused: {why}", "pause")
    if len(state.start) < s.start_steps:
        state = replace(state, start=(*state.start, H))
    start = state.start_entropy(s)
    target = s.target.at(step.step + s.lead, start)
    target_now = s.target.at(step.step, start)
    state = _smoothed(s, state, step, target)
    if target is None or target_now is None:
        return Decision(
            None, state,
            f"measuring the start entropy: {len(state.start)}/{s.start_steps} steps", "wait",
        )  # fmt: skip
    current = step.knob_value
    if not step.ran_latest:
        # The step ran an older control: its entropy does not show the last change yet.
        return Decision(None, state, f"step {step.step} ran an older control: waiting",
                        "skip", target, None)  # fmt: skip
    lo, hi, floor = s.lower, s.upper_bound, s.floor_value
    u_now = math.log(max(current, floor))
    if state.u is not None and abs(math.exp(state.u) - max(current, floor)) <= s.min_change * max(
        current, floor
    ):  # the knob is where the law left it: keep the moves too small to have been written
        u_now = state.u
    Hs = math.exp(state.log_h) if state.log_h is not None else H  # what the law acts on
    Ts = math.exp(state.log_t) if state.log_t is not None else target
    error = math.log(Ts / Hs) if Hs > 0 else math.inf
    shown = f"H {_fmt(H)}" if Hs == H else f"H {_fmt(H)} (smoothed {_fmt(Hs)})"

    over = 1.0 + max(s.band or 0.0, s.guard_margin)
    if step.exploding or Hs > target_now * over:
        new = lo if step.exploding or current <= floor else max(current * s.guard_cut, lo)
        why = "run exploding" if step.exploding else f"{shown} > {_fmt(over)} x target"
        new_state = replace(state, u=math.log(max(new, floor)), last_error=None,
                            last_step=step.step, last_cov=state.cov)  # fmt: skip
        return _written(s, new_state, current, new, f"guard: {why} {_fmt(target_now)}",
                        "guard", target, error)  # fmt: skip

    e = error
    if s.band is not None:  # inside the band the error counts as 0, outside only the excess
        e = math.copysign(max(abs(e) - math.log1p(s.band), 0.0), e)
    # steps since the last decision (2 when each decision waits for its version), capped so a
    # long gap does not integrate as if the error had held all along
    dt = min(step.step - state.last_step, MAX_DT) if state.last_step is not None else 1
    de = e - state.last_error if state.last_error is not None else 0.0
    du = s.kp * de + s.ki * max(dt, 1) * e
    cov = state.cov
    if (
        s.feedforward
        and cov is not None
        and state.last_cov is not None
        and min(cov, state.last_cov) > 0
    ):
        du += s.feedforward * math.log(cov / state.last_cov)
    du = max(-s.max_step, min(s.max_step, du))
    # At a bound the knob leaves it only in the direction the error asks for: the velocity
    # form's proportional kick (error shrinking while still of the same sign) must not pull a
    # saturated knob off its bound.
    if (current >= hi and e >= 0) or (current <= floor and e <= 0):
        du = 0.0 if current >= hi else -1.0
    u = min(u_now + du, math.log(hi))
    if current <= floor and du <= 0:
        new = lo  # at or under the floor and asked to fall: off
        u = math.log(floor)
    elif u < math.log(floor):
        new, u = lo, math.log(floor)
    else:
        new = math.exp(u)
        if current < floor:  # re-entry from 0: start at the floor, then climb
            new = max(new, floor)
    new_state = replace(state, u=u, last_error=e, last_step=step.step, last_cov=cov)
    side = "<" if Hs < target else ">="
    head = f"{shown} {side} target {_fmt(target)} (step {step.step + s.lead})"
    return _written(s, new_state, current, new, head, "set", target, error)


def _smoothed(s: Settings, state: State, step: StepInput, target: float | None) -> State:
    """The moving averages updated with this step (every finite step counts). The target goes
    through the same average as the entropy: on a falling schedule the averaged entropy lags
    by (1 - a) / a steps, and comparing it with the target of now would bias the entropy low."""
    a = s.smoothing
    log_t = state.log_t
    if target is not None:
        log_t = math.log(target) if log_t is None else log_t + a * (math.log(target) - log_t)
    log_h = math.log(step.entropy) if step.entropy > 0 else None
    if log_h is not None and state.log_h is not None:
        log_h = state.log_h + a * (log_h - state.log_h)
    cov = step.cov_mean if step.cov_mean is not None and math.isfinite(step.cov_mean) else None
    if cov is None:
        cov = state.cov
    elif state.cov is not None:
        cov = state.cov + a * (cov - state.cov)
    return replace(state, log_h=log_h, log_t=log_t, cov=cov)


def _written(
    s: Settings,
    state: State,
    current: float,
    new: float,
    head: str,
    action: Action,
    target: float | None,
    error: float,
) -> Decision:
    """A decision that writes `new` only if it moves the knob by more than min_change."""
    new = min(max(new, s.lower), s.upper_bound)
    moved = abs(new - current) > s.min_change * max(abs(current), s.floor_value) or (
        new != current and new in (s.lower, s.upper_bound)
    )
    if not moved:
        return Decision(None, state, f"{head}: {s.knob} stays {_fmt(current)}",
                        "hold" if action == "set" else action, target, error)  # fmt: skip
    state = replace(state, decisions=state.decisions + 1)
    bound = " (at upper bound)" if new >= s.upper_bound else ""
    return Decision(new, state, f"{head}: {s.knob} {_fmt(current)} -> {_fmt(new)}{bound}",
                    action, target, error)  # fmt: skip
