from __future__ import annotations

import math
import statistics

import pytest

from monitor.analysis import fit_law, track_record
from monitor.analysis.law import MIN_R2
from tests.monitor.synthetic_runs import A, B, entropy_curve, law_reward, law_run, point

SEEDS = range(20)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_and_b_recovered_within_2_percent_at_noise_001(seed: int) -> None:
    fit = fit_law(law_run(500, noise=0.01, seed=seed))
    assert fit.enough_data and fit.a is not None and fit.b is not None
    assert fit.a == pytest.approx(A, rel=0.02)
    assert fit.b == pytest.approx(B, rel=0.02)
    assert fit.ceiling == pytest.approx(B - A, rel=0.02)
    assert fit.r2 is not None and fit.r2 > 0.98


def test_ceiling_interval_covers_the_truth_at_its_level() -> None:
    fits = [fit_law(law_run(300, noise=0.01, seed=s)) for s in range(200)]
    covered = sum(f.ceiling_low <= B - A <= f.ceiling_high for f in fits)  # type: ignore[operator]
    assert 0.90 <= covered / len(fits) <= 0.99  # a 95% interval, 200 draws


@pytest.mark.parametrize("smooth", [1, 5])
def test_standard_errors_match_the_spread_across_seeds(smooth: int) -> None:
    """Honest errors with and without block smoothing: the reported se_a is the sd of a."""
    fits = [fit_law(law_run(300, noise=0.02, seed=s), smooth=smooth) for s in range(100)]
    spread = statistics.stdev(f.a for f in fits)  # type: ignore[misc]
    reported = statistics.mean(f.se_a for f in fits)  # type: ignore[misc]
    assert 0.8 < reported / spread < 1.25


def test_smoothing_keeps_the_law_and_lifts_r2() -> None:
    run = law_run(400, noise=0.03, seed=1)
    raw, smooth = fit_law(run), fit_law(run, smooth=8)
    assert smooth.points == 50 and smooth.steps == 400
    assert smooth.a == pytest.approx(A, rel=0.03) and smooth.b == pytest.approx(B, rel=0.03)
    assert smooth.r2 > raw.r2  # type: ignore[operator]


@pytest.mark.parametrize("seed", SEEDS)
def test_early_fit_on_36_steps_predicts_the_next_200_within_2_percent(seed: int) -> None:
    record = track_record(law_run(236, noise=0.005, seed=seed), fit_steps=36)
    assert record.enough_data and record.fit_points == 36 and record.predicted == 200
    assert record.relative_rmse is not None and record.relative_rmse < 0.02


@pytest.mark.parametrize("seed", SEEDS)
def test_early_fit_error_at_noise_001_stays_within_2_reward_points(seed: int) -> None:
    record = track_record(law_run(236, noise=0.01, seed=seed), fit_steps=36)
    assert record.rmse is not None and record.rmse < 0.02
    assert record.rmse > 0.008  # it cannot beat the reward noise it is scored against


def test_early_fit_of_a_run_off_the_law_scores_badly() -> None:
    """The track record is a real test: a reward that saturates early breaks the law."""
    run = [point(t, entropy=entropy_curve(t), reward=min(0.5, 0.02 * t)) for t in range(236)]
    record = track_record(run, fit_steps=36)
    assert record.relative_rmse is not None and record.relative_rmse > 0.2


def test_steps_without_reward_and_nan_rows_are_skipped() -> None:
    run = law_run(600, noise=0.01, seed=3)
    for p in run[1::3]:
        p.stats.pop("reward")  # rewards logged on two steps in three
    for p in run[2::50]:
        p.stats["entropy"] = math.nan
    run[10].stats["reward"] = math.inf
    fit = fit_law(run)
    assert fit.enough_data and fit.steps == 400 - 8  # 8 of the NaN rows had a reward
    assert fit.a == pytest.approx(A, rel=0.02) and fit.b == pytest.approx(B, rel=0.02)
    record = track_record(run)
    assert record.enough_data and record.fit_points == 23  # 24 rewarded in the first 36, 1 inf


@pytest.mark.parametrize(
    "run",
    [
        [],
        [point(0, entropy=1.0, reward=0.1)],
        [point(0, entropy=1.0, reward=0.1), point(1, entropy=0.9, reward=0.2)],
        [point(t, entropy=math.nan, reward=0.1 * t) for t in range(50)],
        [point(t, entropy=1.0) for t in range(50)],  # no reward at all
    ],
    ids=["empty", "one", "two", "all-nan", "no-reward"],
)
def test_fewer_than_3_points_is_not_enough_data(run: list) -> None:  # type: ignore[type-arg]
    fit, record = fit_law(run), track_record(run)
    assert not fit.enough_data and fit.note.startswith("not enough data")
    assert fit.a is None and fit.ceiling is None
    assert not record.enough_data and record.note.startswith("not enough data")


def test_constant_entropy_is_not_enough_data() -> None:
    run = [point(t, entropy=0.7, reward=0.1 * (t % 3)) for t in range(100)]
    fit = fit_law(run)
    assert not fit.enough_data and "entropy does not vary" in fit.note
    assert fit.steps == 100


def test_constant_reward_fits_a_flat_law_without_r2() -> None:
    run = [point(t, entropy=entropy_curve(t), reward=0.4) for t in range(50)]
    fit = fit_law(run)
    assert fit.enough_data and fit.a == pytest.approx(0.0, abs=1e-12) and fit.r2 is None


def test_too_few_blocks_says_lower_smooth() -> None:
    fit = fit_law(law_run(20), smooth=10)
    assert not fit.enough_data and "lower `smooth`" in fit.note


def test_track_record_without_later_steps_keeps_its_fit() -> None:
    record = track_record(law_run(30), fit_steps=36)
    assert not record.enough_data and "no step with a reward after" in record.note
    assert record.a == pytest.approx(A, rel=0.1) and record.predicted == 0


def test_result_serialises_to_strict_json() -> None:
    fit = fit_law([point(t, entropy=math.nan, reward=law_reward(1.0)) for t in range(5)])
    assert "NaN" not in fit.model_dump_json()
    assert fit_law(law_run(50)).model_dump(mode="json")["a"] == pytest.approx(A, rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_a_law_following_run_holds_and_its_ceiling_is_a_prediction(seed: int) -> None:
    fit = fit_law(law_run(300, noise=0.01, seed=seed))
    assert fit.holds and fit.verdict.startswith("predicted ceiling")
    assert fit.reward_reached is not None and fit.reward_reached < fit.ceiling_high  # type: ignore[operator]


def test_a_poor_fit_is_no_prediction() -> None:
    fit = fit_law(law_run(300, noise=0.3, seed=0))  # the law buried in noise
    assert fit.enough_data and fit.r2 is not None and fit.r2 < MIN_R2
    assert not fit.holds and "poor fit" in fit.verdict


def test_a_reward_above_the_ceilings_interval_is_no_prediction() -> None:
    """The law fits the early steps, then the reward climbs past its ceiling while entropy
    stays: the ceiling is contradicted by what the run already reached."""
    run = law_run(300, noise=0.005, seed=0)
    ceiling = fit_law(run).ceiling
    assert ceiling is not None
    late = [point(300 + i, entropy=entropy_curve(299), reward=ceiling + 0.05) for i in range(20)]
    fit = fit_law(run + late)
    assert fit.r2 is not None and fit.r2 >= MIN_R2  # still a good fit over the whole run
    assert not fit.holds and "already reached" in fit.verdict
