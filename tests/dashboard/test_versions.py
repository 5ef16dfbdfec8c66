from __future__ import annotations

from typing import Any

import pytest

from dashboard.versions import before_after, segments, started_with


def run(versions: list[int | None], entropy: list[float], reward: list[float]) -> list[Any]:
    return [
        {"step": i, "control_version": v, "stats": {"entropy": h, "reward": r}}
        for i, (v, h, r) in enumerate(zip(versions, entropy, reward, strict=True))
    ]


def test_segments_follow_the_version_each_step_applied() -> None:
    steps = run([0, 0, None, 1, 1, 2], [1.0] * 6, [0.0] * 6)
    assert [(v, [p["step"] for p in s]) for v, s in segments(steps)] == [
        (0, [0, 1, 2]),
        (1, [3, 4]),
        (2, [5]),
    ]


def test_a_change_is_judged_on_the_same_number_of_steps_each_side() -> None:
    # entropy falls 0.01 per step under v0 and holds under v1; the reward rises after the switch
    entropy = [1.0 - 0.01 * i for i in range(10)] + [0.9] * 4
    reward = [0.2] * 10 + [0.4] * 4
    (row,) = before_after(run([0] * 10 + [1] * 4, entropy, reward))
    assert row["version"] == "v0 → v1" and row["from step"] == 10 and row["steps compared"] == 4
    assert row["entropy slope before (/100 steps)"] == pytest.approx(-1.0)
    assert row["entropy slope after (/100 steps)"] == pytest.approx(0.0)
    assert (row["reward before"], row["reward after"]) == (0.2, 0.4)


def test_the_run_started_with_the_newest_version_requested_before_its_first_report() -> None:
    steps = [{"step": 0, "time": 100.0}, {"step": 1, "time": 101.0}]
    audit = [{"version": v, "when": t} for v, t in ((3, 100.5), (2, 99.0), (1, 98.0))]
    assert started_with(audit, steps) == 2
    assert started_with(audit[:1], steps) is None  # every change came during the run
    assert started_with(audit, [{"step": 0, "time": None}]) is None


def test_the_catch_up_to_the_starting_version_is_no_before_and_after_row() -> None:
    steps = run([0, 1, 1, 1, 2, 2, 2], [1.0] * 7, [0.0] * 7)
    assert [r["version"] for r in before_after(steps)] == ["v0 → v1", "v1 → v2"]
    assert [r["version"] for r in before_after(steps, started=1)] == ["v1 → v2"]
