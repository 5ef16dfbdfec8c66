"""The wire contract's pure helpers: the knob rules, the pooling both sides use, the codec."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from entmon.wire.knobs import DEFAULTS, KNOBS, control_errors
from entmon.wire.layouts import LAYOUTS, LENGTH_LAYOUT, bucket_index
from entmon.wire.numbers import from_wire, to_wire, wire_numbers
from entmon.wire.stats import STATS, pooled_std, weighted_mean


def test_the_defaults_are_valid_and_every_bad_field_is_named() -> None:
    assert control_errors(DEFAULTS) == []
    bad = {**DEFAULTS, "loss_mode": "x", "kl_cov_ratio": 2.0, "clip_ratio_low": 0.0}
    errors = control_errors(bad | {"clip_cov_lb": 5.0})
    named = {e.split(":")[0] for e in errors}
    assert named == {"loss_mode", "kl_cov_ratio", "clip_ratio_low", "clip_cov_lb"}
    assert control_errors({**DEFAULTS, "nope": 1}) == ["nope: unknown knob"]


@pytest.mark.parametrize("knob", [k for k in KNOBS if k.numeric], ids=lambda k: k.name)
def test_numeric_knobs_refuse_nan_bools_and_strings(knob: object) -> None:
    for value in (math.nan, math.inf, True, "1"):
        assert knob.errors(value), value  # type: ignore[attr-defined]


def test_pooled_std_equals_the_std_of_the_union() -> None:
    rng = random.Random(0)
    parts = [[rng.gauss(rng.uniform(-2, 2), rng.uniform(0.1, 3)) for _ in range(n)]
             for n in (5, 50, 1, 200)]  # fmt: skip
    union = [x for p in parts for x in p]
    mean, std = pooled_std((statistics.fmean(p), statistics.pvariance(p), len(p)) for p in parts)
    assert mean == pytest.approx(statistics.fmean(union), rel=1e-12)
    assert std == pytest.approx(statistics.pstdev(union), rel=1e-12)
    assert math.isnan(pooled_std([(0.0, math.nan, 1.0), (1.0, 1.0, 1.0)])[1])


def test_weighted_mean_ignores_empty_parts_and_keeps_nan() -> None:
    assert weighted_mean([(1.0, 1.0), (math.nan, 0.0), (4.0, 3.0)]) == pytest.approx(3.25)
    assert math.isnan(weighted_mean([(math.nan, 1.0), (1.0, 1.0)]))


def test_non_finite_numbers_round_trip_as_strings() -> None:
    doc = {"a": [math.nan, math.inf, -math.inf, 1.5], "b": (2, "NaN-ish")}
    wire = wire_numbers(doc)
    assert wire == {"a": ["NaN", "Infinity", "-Infinity", 1.5], "b": [2, "NaN-ish"]}
    back = [from_wire(v) for v in wire["a"]]
    assert math.isnan(back[0]) and back[1:] == [math.inf, -math.inf, 1.5]
    assert from_wire("NaN-ish") == "NaN-ish" and to_wire(3) == 3


def test_every_statistic_has_one_merge_rule_and_pooled_stds_name_their_mean() -> None:
    names = {s.name for s in STATS}
    assert len(names) == len(STATS)
    assert all(s.around in names for s in STATS if s.merge == "pooled_std")
    assert all(s.integer == (s.merge == "sum") for s in STATS)


def test_a_mean_is_weighted_by_a_count_statistic() -> None:
    counts = {s.name for s in STATS if s.merge == "sum"}
    assert all(s.weight in counts for s in STATS if s.merge == "mean")
    assert {s.name for s in STATS if s.weight == "sequences"} == {
        "response_length",
        "zero_adv_sequence_share",
    }


def test_length_buckets_are_the_integers_of_four_per_doubling() -> None:
    bounds = LAYOUTS[LENGTH_LAYOUT]
    assert bounds[:8] == (1, 2, 3, 4, 5, 6, 8, 9) and bounds[-1] == 2**18
    assert all(b == int(b) for b in bounds) and list(bounds) == sorted(set(bounds))
    assert bucket_index(LENGTH_LAYOUT, 7) == bucket_index(LENGTH_LAYOUT, 8) == 6
