from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from monitor.thermostat import Settings, SettingsError, State, StepInput, Target, decide, resume

START = 2.0  # nats: the start entropy the tests' runs report first


def primed(settings: Settings) -> State:
    """A state whose start entropy is known (5 steps at START)."""
    state = State()
    for k in range(settings.start_steps):
        state = decide(settings, state, StepInput(step=k, entropy=START, knob_value=0.0)).state
    return state


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {"target": Target.absolute(1.0), "knob": "entropy_coeff",
                               "upper": 1.0, "floor": 0.01, "smoothing": 1.0}  # fmt: skip
    return Settings(**(base | kw))  # type: ignore[arg-type]


def step(k: int, h: float, value: float, **kw: object) -> StepInput:
    return StepInput(step=k, entropy=h, knob_value=value, **kw)  # type: ignore[arg-type]


def test_action_is_multiplicative_in_the_knob() -> None:
    s = settings()
    state = primed(s)
    small = decide(s, state, step(10, 0.8, 0.01))
    large = decide(s, state, step(10, 0.8, 0.1))
    assert small.value is not None and large.value is not None
    assert small.value / 0.01 == pytest.approx(large.value / 0.1)
    assert small.value > 0.01


def test_a_knob_at_zero_rises_again() -> None:
    s = settings(lower=0.0)
    state = primed(s)
    d = decide(s, state, step(10, 0.5, 0.0))
    assert d.value is not None and d.value >= s.floor_value > 0
    # and climbs from there on the following decisions
    d2 = decide(s, d.state, step(12, 0.5, d.value))
    assert d2.value is not None and d2.value > d.value


def test_a_knob_under_the_floor_asked_to_fall_goes_to_lower() -> None:
    s = settings(lower=0.0, guard_margin=10.0)
    d = decide(s, primed(s), step(10, 1.5, 0.01))
    assert d.value == 0.0


def test_anti_windup_leaves_the_upper_bound_at_once_when_the_error_turns() -> None:
    s = settings()
    state, value = primed(s), 0.5
    for k in range(10, 110):  # entropy far below target for 100 steps: pinned at the bound
        d = decide(s, state, step(k, 0.3, value))
        state, value = d.state, d.value if d.value is not None else value
    assert value == s.upper_bound
    d = decide(s, state, step(110, 1.05, value))  # slightly above target now
    assert d.value is not None and d.value < s.upper_bound


def test_rate_limit_per_decision() -> None:
    s = settings(max_step=0.1, kp=50.0, ki=50.0)
    state = primed(s)
    d = decide(s, state, step(10, 0.1, 0.1))
    assert d.value == pytest.approx(0.1 * math.exp(0.1))
    d = decide(s, state, step(10, 1.1, 0.1))  # within the guard margin, above target
    assert d.value == pytest.approx(0.1 * math.exp(-0.1))


def test_actuator_bounds_hold() -> None:
    s = settings(lower=0.05, upper=0.2, floor=0.05, max_step=5.0, ki=10.0)
    state = primed(s)
    assert decide(s, state, step(10, 0.1, 0.15)).value == 0.2
    assert decide(s, state, step(10, 1.14, 0.15)).value == 0.05


def test_guard_cuts_fast_on_overshoot_past_the_rate_limit() -> None:
    s = settings(max_step=0.01, guard_margin=0.1, guard_cut=0.5)
    d = decide(s, primed(s), step(10, 1.2, 0.4))  # 20% over the target
    assert d.action == "guard" and d.value == pytest.approx(0.2)
    assert "guard" in d.reason and "1.2" in d.reason


def test_guard_uses_the_band_when_it_is_wider() -> None:
    s = settings(band=0.3, guard_margin=0.1)
    d = decide(s, primed(s), step(10, 1.2, 0.4))  # inside the band: no guard, no change
    assert d.action == "hold" and d.value is None


def test_exploding_sets_the_knob_to_lower() -> None:
    s = settings(lower=0.0)
    d = decide(s, primed(s), step(10, 0.5, 0.4, exploding=True))  # even below target
    assert d.action == "guard" and d.value == 0.0 and "exploding" in d.reason


def test_non_finite_entropy_pauses_with_a_reason_and_resume_starts_from_the_knob() -> None:
    s = settings()
    d = decide(s, primed(s), step(10, math.nan, 0.3))
    assert d.value is None and d.action == "pause" and d.state.mode == "paused"
    assert "non-finite entropy at step 10" in d.state.reason
    later = decide(s, d.state, step(11, 0.5, 0.3))
    assert later.value is None and later.action == "paused"
    resumed = decide(s, resume(later.state), step(12, 0.95, 0.3))
    assert resumed.state.mode == "running"
    # from the CURRENT value: a small error gives a small move, no jump
    assert resumed.value is None or abs(math.log(resumed.value / 0.3)) < 0.05


def test_other_non_finite_statistics_pause_too() -> None:
    s = settings()
    d = decide(s, primed(s), step(10, 0.9, 0.3, non_finite=True))
    assert d.state.mode == "paused" and d.value is None


def test_never_acts_on_a_step_that_ran_an_older_control() -> None:
    s = settings()
    state = primed(s)
    d = decide(s, state, step(10, 0.2, 0.3, ran_latest=False))
    assert d.value is None and d.action == "skip"
    assert replace(d.state, log_h=state.log_h) == state  # only the entropy average moved


def test_the_law_acts_on_a_moving_average_of_the_entropy() -> None:
    s = settings(smoothing=0.5, min_change=0.0, guard_margin=10.0, kp=0.0)
    state = primed(s)  # average ln 2
    d = decide(s, state, step(10, 0.5, 0.3))  # one low step: average ln 1 = the target
    assert d.state.log_h == pytest.approx(0.0)
    assert d.value is None or d.value == pytest.approx(0.3)
    assert "H 0.5 (smoothed 1)" in d.reason
    raw = decide(replace(s, smoothing=1.0), state, step(10, 0.5, 0.3))
    assert raw.value is not None and raw.value > 0.3


def test_reason_carries_the_numbers() -> None:
    s = settings(target=Target.absolute(0.9), lead=0)
    d = decide(s, primed(s), step(10, 0.82, 0.002))
    assert d.value is not None
    assert d.reason.startswith("H 0.82 < target 0.9")
    assert "entropy_coeff 0.002 -> " in d.reason


def test_small_moves_are_held_not_written() -> None:
    s = settings(min_change=0.05)
    d = decide(s, primed(s), step(10, 0.999, 0.3))
    assert d.value is None and d.action == "hold" and "stays 0.3" in d.reason


def test_band_suppresses_action_inside_it() -> None:
    s = settings(band=0.1, min_change=0.0)
    state = primed(s)
    assert decide(s, state, step(10, 0.95, 0.3)).value is None
    assert decide(replace(s, band=None), state, step(10, 0.95, 0.3)).value is not None


def test_covariance_feedforward_raises_the_knob_before_the_entropy_falls() -> None:
    s = settings(feedforward=1.0, min_change=0.0)
    state = primed(s)
    first = decide(s, state, step(10, 1.0, 0.3, cov_mean=0.01))
    d = decide(s, first.state, step(11, 1.0, 0.3, cov_mean=0.02))  # covariance doubled
    assert d.value is not None and d.value == pytest.approx(
        0.3 * math.exp(min(math.log(2), s.max_step))
    )
    off = decide(replace(s, feedforward=0.0), first.state, step(11, 1.0, 0.3, cov_mean=0.02))
    assert off.value is None


def test_schedule_is_interpolated_and_relative_targets_wait_for_the_start() -> None:
    t = Target.schedule([(0, 0.8), (100, 0.1)], of_start=True)
    assert t.at(50, 2.0) == pytest.approx(0.9)
    assert t.at(500, 2.0) == pytest.approx(0.2)
    assert t.at(50, None) is None
    s = settings(target=t)
    d = decide(s, State(), step(0, 2.0, 0.0))
    assert d.action == "wait" and "start entropy: 1/5" in d.reason
    assert Target.absolute(0.5).at(7, None) == 0.5


def test_the_decision_aims_at_the_target_of_the_step_that_will_run_it() -> None:
    t = Target.schedule([(0, 2.0), (100, 1.0)])
    s = settings(target=t, lead=2)
    d = decide(s, primed(s), step(50, 1.4, 0.3))
    assert d.target == pytest.approx(1.48)  # the target of step 52


def test_state_round_trips_through_json_and_resumes_identically() -> None:
    s = settings(target=Target.schedule([(0, 0.8), (300, 0.1)], of_start=True))
    state, value = State(), 0.0
    seq = [2.0, 2.0, 1.9, 1.9, 1.8, 1.5, 1.2, 1.0, 0.9, 0.95, 1.1]
    for k, h in enumerate(seq[:6]):
        d = decide(s, state, step(k, h, value))
        state, value = d.state, d.value if d.value is not None else value
    restored = State.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    for k, h in enumerate(seq[6:], start=6):
        a, b = decide(s, state, step(k, h, value)), decide(s, restored, step(k, h, value))
        assert (a.value, a.reason, a.state) == (b.value, b.reason, b.state)
        state, restored = a.state, b.state
        value = a.value if a.value is not None else value


def test_settings_round_trip_and_errors_name_the_field() -> None:
    s = settings(target=Target.schedule([(0, 0.8), (300, 0.1)], of_start=True), band=0.05)
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    cases: list[tuple[dict[str, object], str]] = [
        ({"knob": "temperature"}, "knob"),
        ({"upper": 0.0}, "upper"),
        ({"lower": 0.5, "upper": 0.4}, "upper"),
        ({"band": 1.5}, "band"),
        ({"kp": -1.0}, "kp"),
        ({"max_step": 0.0}, "max_step"),
        ({"guard_cut": 1.0}, "guard_cut"),
        ({"floor": 2.0}, "floor"),
        ({"lead": -1}, "lead"),
        ({"ki": math.nan}, "ki"),
    ]
    for change, name in cases:
        with pytest.raises(SettingsError) as info:
            settings(**change)
        assert info.value.field == name and str(info.value).startswith(f"{name}: ")
    with pytest.raises(SettingsError) as info:
        Target.schedule([(0, 0.8), (0, 0.1)])
    assert info.value.field == "target.points[1].step"
    with pytest.raises(SettingsError) as info:
        Target.absolute(-1.0)
    assert info.value.field == "target.points[0].value"
    with pytest.raises(SettingsError) as info:
        Settings.from_dict(s.to_dict() | {"gain": 1})
    assert info.value.field == "gain"
    with pytest.raises(SettingsError) as info:
        Settings.from_dict(s.to_dict() | {"target": {"points": [[0, "high"]]}})
    assert info.value.field == "target.points[0].value"


def test_a_plant_that_responds_to_the_knob_is_driven_to_its_target() -> None:
    """A synthetic run: entropy drifts down by 3%/step and the knob pushes it up in proportion;
    every decision lands two steps later, as through the service."""
    s = Settings(target=Target.absolute(1.0), knob="kl_cov_ratio")
    state, h, applied, pending = State(), 2.0, 0.0, []
    version = latest = 0
    errors = []
    for k in range(300):
        h *= math.exp(-0.03 + 0.1 * applied)
        errors.append(abs(h - 1.0))
        d = decide(s, state, step(k, h, applied, ran_latest=version == latest))
        state = d.state
        if d.value is not None:
            latest += 1
            pending.append((k + 2, latest, d.value))
        for _first, v, value in [p for p in pending if p[0] == k + 1]:
            applied, version = value, v
        pending = [p for p in pending if p[0] > k + 1]
    assert max(errors[-100:]) < 0.03


def test_enabled_mid_run_a_relative_target_refers_to_the_runs_start() -> None:
    s = settings(target=Target.fraction(0.5), lead=0)
    d = decide(s, State.starting(2.0, s), step(100, 0.8, 0.1))
    assert d.target == pytest.approx(1.0) and d.action == "set"
    assert decide(s, State.starting(None, s), step(100, 0.8, 0.1)).action == "wait"
