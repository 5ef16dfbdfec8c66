from __future__ import annotations

import math
import random

import pytest

from monitor.analysis import STATES, collapse, start_entropy
from monitor.api_models import StepPoint
from tests.monitor.synthetic_runs import entropy_run, point

_noise = random.Random(7)
FLAT_NOISE = [_noise.gauss(0.0, 0.03) for _ in range(300)]


def diverged() -> list[StepPoint]:
    return [*entropy_run(lambda t: math.exp(-t / 150), 50), point(50, entropy=math.nan)]


# Each series is built to land in exactly one state.
SERIES = {
    "healthy": entropy_run(lambda t: 1.0 + FLAT_NOISE[t], 200),
    "declining": entropy_run(lambda t: math.exp(-t / 150), 100),
    "collapsed": entropy_run(lambda t: math.exp(-t / 30), 100),
    "exploding": entropy_run(lambda t: 1.0 + 0.01 * t, 100),
    "non-finite": diverged(),
}
# Near misses: each is built close to a state's rule and must not trigger it.
NEAR_MISSES = {
    "slow decay reaches the floor beyond the horizon": (
        entropy_run(lambda t: math.exp(-t / 5000), 200),
        "healthy",
    ),
    "noisy flat entropy is no decline": (
        entropy_run(lambda t: 0.5 + 0.5 * FLAT_NOISE[t], 300),
        "healthy",
    ),
    "rising to 1.4x is not exploding": (entropy_run(lambda t: 1.0 + 0.004 * t, 100), "healthy"),
    "falling, at 0.12 of start, has not collapsed": (
        entropy_run(lambda t: math.exp(-t / 50), 107),
        "declining",
    ),
    "a NaN step followed by finite ones is not divergence now": (
        [*diverged(), *entropy_run(lambda t: 0.7, 120)[51:]],
        "healthy",
    ),
}


def test_there_is_a_series_for_every_state() -> None:
    assert sorted(SERIES) == sorted(STATES)


@pytest.mark.parametrize("expected", sorted(SERIES))
def test_each_state_is_triggered_by_its_series(expected: str) -> None:
    result = collapse(SERIES[expected])
    assert result.state == expected, result.rule
    assert result.rule


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_near_misses_do_not_trigger(name: str) -> None:
    series, expected = NEAR_MISSES[name]
    result = collapse(series)
    assert result.state == expected, result.rule


def test_nonfinite_names_the_step_and_counts_bad_steps() -> None:
    result = collapse(SERIES["non-finite"])
    assert result.latest_step == 50 and "step 50" in result.rule and "diverged" in result.rule
    assert result.nonfinite_steps == 1
    recovered = collapse(NEAR_MISSES["a NaN step followed by finite ones is not divergence now"][0])
    assert recovered.nonfinite_steps == 1 and recovered.latest_step == 119


def test_infinite_entropy_is_nonfinite_too() -> None:
    assert collapse([*entropy_run(lambda t: 1.0, 10), point(10, entropy=math.inf)]).state == (
        "non-finite"
    )


def test_half_life_halving_step_and_floor_crossing_of_an_exponential_decay() -> None:
    run = entropy_run(lambda t: 2.0 * 0.5 ** (t / 100.5), 120)
    result = collapse(run, floor=0.1)
    assert result.half_life_steps == pytest.approx(100.5, rel=1e-6)
    # start = median of steps 0..4 = H(2); H(t) = 0.1 * H(2) at t = 2 + 100.5 * log2(10)
    assert result.start_entropy == pytest.approx(2.0 * 0.5 ** (2 / 100.5))
    assert result.floor_crossing_step == pytest.approx(2 + 100.5 * math.log2(10), rel=1e-6)
    assert result.halved_at_step == 103  # H(t) = start / 2 at t = 102.5
    assert result.relative == pytest.approx(0.5 ** (117 / 100.5))
    assert collapse(run[:100]).halved_at_step is None


def test_floor_and_horizon_are_parameters() -> None:
    run = SERIES["declining"]
    assert collapse(run, horizon=10).state == "healthy"
    assert collapse(run, floor=0.6).state == "collapsed"


def test_start_is_the_median_of_the_first_finite_entropies() -> None:
    run = [
        point(0, entropy=math.nan),
        point(1, reward=0.3),
        *[point(t, entropy=h) for t, h in enumerate([5.0, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0], start=2)],
    ]
    assert start_entropy(run) == 3.0  # median of 5, 1, 2, 3, 4
    assert start_entropy([point(0, reward=1.0)]) is None


@pytest.mark.parametrize(
    "run",
    [
        [],
        [point(0, entropy=1.0), point(1, entropy=0.9)],
        [point(t, entropy=math.nan if t < 8 else 1.0) for t in range(10)] + [point(10, reward=0.5)],
        [point(t, entropy=0.0) for t in range(10)],
    ],
    ids=["empty", "two", "nan-rows", "zero-start"],
)
def test_degenerate_input_is_not_enough_data(run: list[StepPoint]) -> None:
    result = collapse(run)
    assert result.state is None and not result.enough_data
    assert result.rule.startswith("not enough data")


def test_constant_entropy_is_healthy_with_zero_decay() -> None:
    result = collapse(entropy_run(lambda t: 0.8, 60))
    assert result.state == "healthy" and result.decay_rate == 0.0
    assert result.half_life_steps is None and result.floor_crossing_step is None
