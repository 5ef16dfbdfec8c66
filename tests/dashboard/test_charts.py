"""The figures as pure functions: what a person reads off them."""

from __future__ import annotations

from typing import Any

from dashboard import charts


def steps(versions: list[int | None], **stats: float) -> list[dict[str, Any]]:
    return [
        {"step": i, "control_version": v, "stats": {"entropy": 1.0, "reward": 0.5, **stats}}
        for i, v in enumerate(versions)
    ]


def test_control_changes_are_marked_with_the_version_applied() -> None:
    run = steps([0, 0, 1, 1, 3])
    assert charts.version_changes(run) == [(2, 1), (4, 3)]
    fig = charts.entropy_reward(run, changes=charts.version_changes(run))
    labels = [a.text for a in fig.layout.annotations]
    assert "v1" in labels and "v3" in labels


def test_versions_the_run_started_with_are_not_changes() -> None:
    run = steps([0, 1, 1, 2, 2])  # v1 was set before training: the client took it a step in
    assert charts.version_changes(run, started=1) == [(3, 2)]
    fig = charts.compare({"a": run}, "entropy", "Entropy", started={"a": 1})
    assert [a.text for a in fig.layout.annotations] == ["v2"]


def test_compared_runs_get_distinct_colours_and_their_own_change_marks() -> None:
    fig = charts.compare({"a": steps([0, 1]), "b": steps([0, 0])}, "entropy", "Entropy")
    colors = [trace.line.color for trace in fig.data]
    assert len(set(colors)) == 2
    assert [a.text for a in fig.layout.annotations] == ["v1"]


def test_a_chart_without_data_says_so_instead_of_empty_axes() -> None:
    fig = charts.interventions(steps([0, 0]))  # a vanilla run: nothing detached or penalised
    assert [a.text for a in fig.layout.annotations] == ["No Clip-Cov / KL-Cov steps yet."]
    drawn = charts.interventions(steps([0, 0], penalised=408.0))
    assert not drawn.layout.annotations and drawn.layout.yaxis.rangemode == "tozero"
    assert drawn.layout.showlegend
