from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.analysis.fitting import fit_line, pearson, t_cdf, t_quantile


def test_line_matches_hand_computed_least_squares() -> None:
    # x = 1..4, y = 1, 3, 2, 5: Sxx = 5, Sxy = 5.5, SSR = 2.7, s^2 = 1.35 (worked by hand)
    line = fit_line([1, 2, 3, 4], [1, 3, 2, 5])
    assert line is not None
    assert line.slope == pytest.approx(1.1)
    assert line.intercept == pytest.approx(0.0, abs=1e-12)
    assert line.residual_sd == pytest.approx(math.sqrt(1.35))
    assert line.se_slope == pytest.approx(math.sqrt(1.35 / 5))
    assert line.se_intercept == pytest.approx(math.sqrt(1.35 * (1 / 4 + 2.5**2 / 5)))
    assert line.r2 == pytest.approx(1 - 2.7 / 8.75)
    low, high = line.interval(1.0)
    half = 4.302652729749752 * math.sqrt(1.35 * (1 / 4 + 1.5**2 / 5))  # t(0.975, 2 dof)
    assert (low, high) == pytest.approx((1.1 - half, 1.1 + half))


def test_exact_line_has_zero_errors() -> None:
    line = fit_line([10.0, 11.0, 12.0, 13.0], [32.0, 35.0, 38.0, 41.0])
    assert line is not None
    assert (line.slope, line.intercept) == pytest.approx((3.0, 2.0))
    assert line.se_slope == pytest.approx(0.0, abs=1e-9) and line.r2 == pytest.approx(1.0)


def test_weights_act_as_repeated_points() -> None:
    xs, ys = [0.0, 1.0, 2.0, 5.0], [1.0, 0.5, 2.5, 4.0]
    weighted = fit_line(xs, ys, [1.0, 3.0, 1.0, 2.0])
    repeated = fit_line([0, 1, 1, 1, 2, 5, 5], [1.0, 0.5, 0.5, 0.5, 2.5, 4.0, 4.0])
    assert weighted is not None and repeated is not None
    assert (weighted.slope, weighted.intercept) == pytest.approx(
        (repeated.slope, repeated.intercept)
    )


def test_line_far_from_zero_stays_accurate() -> None:
    xs = [1e6 + i for i in range(50)]
    line = fit_line(xs, [0.5 - 1e-3 * (x - 1e6) for x in xs])
    assert line is not None and line.slope == pytest.approx(-1e-3, rel=1e-9)


@pytest.mark.parametrize(
    ("xs", "ys"),
    [([], []), ([1.0], [2.0]), ([1.0, 2.0], [2.0, 3.0]), ([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])],
)
def test_too_few_points_or_constant_x_gives_no_line(xs: list[float], ys: list[float]) -> None:
    assert fit_line(xs, ys) is None


def test_constant_y_has_no_r2() -> None:
    line = fit_line([1.0, 2.0, 3.0], [4.0, 4.0, 4.0])
    assert line is not None and line.slope == 0.0 and line.r2 is None


@pytest.mark.parametrize(
    ("dof", "expected"),  # two-sided 95% critical values from a printed t table
    [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980)],
)
def test_t_quantile_matches_the_table(dof: int, expected: float) -> None:
    assert t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-3)


@given(p=st.floats(0.001, 0.999), dof=st.integers(1, 500))
def test_t_quantile_inverts_the_cdf(p: float, dof: int) -> None:
    t = t_quantile(p, dof)
    assert t_cdf(t, dof) == pytest.approx(p, abs=1e-9)
    assert t_quantile(1 - p, dof) == pytest.approx(-t, abs=1e-9)


def test_pearson() -> None:
    # Sxy = 4.5, Sxx = 2, Syy = 10.1667 (by hand)
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) == pytest.approx(4.5 / math.sqrt(2 * 61 / 6))
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) is None
    assert pearson([1.0, 2.0], [1.0, 2.0]) is None
