from __future__ import annotations

import math
import random

import pytest

from monitor.analysis import theory_check
from monitor.api_models import StepPoint
from tests.monitor.synthetic_runs import point

ETA = 0.8


def dynamics_run(steps: int, *, noise: float, seed: int, every: int = 1) -> list[StepPoint]:
    """Entropy that follows Delta H = -ETA * cov + noise, logged every `every` steps."""
    rng = random.Random(seed)
    h, run = 1.0, []
    for t in range(steps):
        cov = rng.uniform(-0.002, 0.01)  # mostly positive: entropy mostly falls
        if t % every == 0:
            run.append(point(t, entropy=h, cov_mean=cov))
        h += -ETA * cov + rng.gauss(0.0, noise)
    return run


def test_entropy_following_the_theory_agrees() -> None:
    result = theory_check(dynamics_run(300, noise=1e-4, seed=0))
    assert result.enough_data and result.pairs == 299
    assert result.eta == pytest.approx(ETA, rel=0.02)
    assert result.eta_se is not None and result.eta_se < 0.02
    assert result.correlation is not None and result.correlation < -0.95
    assert result.sign_agreement is not None and result.sign_agreement > 0.95


def test_entropy_unrelated_to_covariance_disagrees() -> None:
    rng = random.Random(1)
    run = [
        point(t, entropy=1.0 + rng.gauss(0, 0.01), cov_mean=rng.uniform(-0.01, 0.01))
        for t in range(400)
    ]
    result = theory_check(run)
    assert result.correlation is not None and abs(result.correlation) < 0.15
    assert result.sign_agreement is not None and 0.4 < result.sign_agreement < 0.6
    assert result.eta is not None and abs(result.eta) < 3 * result.eta_se  # type: ignore[operator]


def test_sparse_logging_uses_the_change_per_step() -> None:
    """Logged every 5 steps: cov of the logged step stands for its 5 steps, so eta holds."""
    rng = random.Random(2)
    h, run = 1.0, []
    for t in range(0, 1000, 5):
        cov = rng.uniform(0.0, 0.01)
        run.append(point(t, entropy=h, cov_mean=cov))
        h += -ETA * cov * 5
    result = theory_check(run)
    assert result.eta == pytest.approx(ETA, rel=1e-9)


def test_nan_rows_and_missing_covariance_are_skipped() -> None:
    run = dynamics_run(100, noise=1e-4, seed=3)
    run[10].stats["entropy"] = math.nan  # breaks pairs (9, 10) and (10, 11)
    del run[20].stats["cov_mean"]  # breaks pair (20, 21)
    result = theory_check(run)
    assert result.pairs == 99 - 3 and result.eta == pytest.approx(ETA, rel=0.05)


@pytest.mark.parametrize(
    "run",
    [
        [],
        [point(0, entropy=1.0, cov_mean=0.1), point(1, entropy=0.9, cov_mean=0.1)],
        [point(t, entropy=1.0 - 0.01 * t) for t in range(20)],  # no covariance
        [point(t, entropy=math.nan, cov_mean=0.1) for t in range(20)],
    ],
    ids=["empty", "one-pair", "no-cov", "all-nan"],
)
def test_degenerate_input_is_not_enough_data(run: list[StepPoint]) -> None:
    result = theory_check(run)
    assert not result.enough_data and result.note.startswith("not enough data")
    assert result.eta is None and result.correlation is None


def test_zero_covariance_is_not_enough_data() -> None:
    result = theory_check([point(t, entropy=1.0, cov_mean=0.0) for t in range(20)])
    assert not result.enough_data and "cov_mean is 0" in result.note


def test_constant_entropy_has_no_correlation_but_a_zero_eta() -> None:
    result = theory_check([point(t, entropy=0.5, cov_mean=0.01 * (t % 3)) for t in range(20)])
    assert result.enough_data and result.eta == 0.0 and result.correlation is None
    assert result.sign_agreement is None  # Delta H is 0: no sign to agree with
