"""The GRPO group health charts of the Run page, as pure functions of API data."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard import group_health
from entmon.wire.layouts import LAYOUTS, LENGTH_LAYOUT, bucket_count, bucket_index

K = bucket_count(LENGTH_LAYOUT)


def steps(n: int, **stats: float) -> list[dict[str, Any]]:
    return [{"step": i, "stats": dict(stats)} for i in range(n)]


def series(*rows: dict[str, Any]) -> dict[str, Any]:
    """A /histograms answer on length-v1 holding these steps."""
    return {
        "name": "response_length",
        "layout": LENGTH_LAYOUT,
        "upper_bounds": list(LAYOUTS[LENGTH_LAYOUT]),
        "steps": list(rows),
    }


def lengths_row(
    step: int, lengths: dict[int, int], sums: dict[int, float] | None = None
) -> dict[str, Any]:
    counts = [0] * K
    for length, n in lengths.items():
        counts[bucket_index(LENGTH_LAYOUT, length)] += n
    row: dict[str, Any] = {"step": step, "counts": counts, "nonfinite": 0, "sums": None}
    if sums is not None:
        row["sums"] = [0.0] * K
        for length, total in sums.items():
            row["sums"][bucket_index(LENGTH_LAYOUT, length)] += total
    return row


def empty_text(fig: Any) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_zero_advantage_shares_are_drawn_over_steps_with_the_alert_threshold() -> None:
    run = steps(3, zero_adv_sequence_share=0.25, zero_adv_token_share=0.2)
    fig = group_health.zero_advantage(run)
    assert [t.name for t in fig.data] == ["sequences", "tokens"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [0.25] * 3
    assert any("alert above 80%" in a.text for a in fig.layout.annotations)
    assert fig.layout.yaxis.range == (0, 1)


def test_mean_length_is_drawn_over_steps() -> None:
    fig = group_health.mean_length(steps(4, response_length=120.0))
    assert list(fig.data[0].y) == [120.0] * 4


def test_the_latest_length_histogram_is_drawn_between_its_first_and_last_filled_bucket() -> None:
    hist = series(lengths_row(0, {3: 9}), lengths_row(5, {7: 2, 8: 1, 100: 4}))
    fig = group_health.length_histogram(hist)
    (bar,) = fig.data
    assert bar.x[0] == "7-8" and bar.y[0] == 3  # lengths 7 and 8 share a bucket
    assert bar.x[-1] == "91-107" and bar.y[-1] == 4
    assert sum(bar.y) == 7 and "step 5" in fig.layout.title.text


def test_entropy_by_length_is_each_buckets_sum_over_its_tokens() -> None:
    hist = series(lengths_row(2, {5: 10, 40: 80}, sums={5: 25.0, 40: 40.0}))
    fig = group_health.entropy_by_length(hist)
    (bar,) = fig.data
    assert list(bar.x) == ["5", "39-45"]  # the empty buckets between are left out
    assert list(bar.y) == pytest.approx([2.5, 0.5])
    assert list(bar.customdata) == [10, 80]


def test_bucket_labels_name_the_lengths_each_bucket_holds() -> None:
    labels = group_health.length_labels(LAYOUTS[LENGTH_LAYOUT])
    assert labels[:8] == ["1", "2", "3", "4", "5", "6", "7-8", "9"]
    assert labels[-1] == ">262144" and len(labels) == K


@pytest.mark.parametrize(
    "draw",
    [
        lambda: group_health.zero_advantage(steps(3, entropy=1.0)),
        lambda: group_health.mean_length([]),
        lambda: group_health.length_histogram(series()),
        lambda: group_health.length_histogram(series(lengths_row(0, {}))),
        lambda: group_health.entropy_by_length(None),
    ],
)
def test_a_chart_without_data_says_so_instead_of_empty_axes(draw: Any) -> None:
    fig = draw()
    (text,) = empty_text(fig)
    assert text.startswith("No ") and not fig.layout.xaxis.visible
