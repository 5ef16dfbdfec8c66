from __future__ import annotations

from typing import Any

import pytest

from dashboard import charts, thermostat


def state(status: str = "running", **settings: Any) -> dict[str, Any]:
    return {"status": status, "start_entropy": 2.0, "settings": settings}


def test_a_schedule_relative_to_the_start_is_drawn_in_nats_with_its_band() -> None:
    s = state(target={"points": [[10, 0.8], [110, 0.3]], "of_start": True}, band=0.1)
    line = thermostat.target_line(s, 0, 200)
    assert line is not None
    assert line.steps == [0, 10, 110, 200]
    assert line.values == pytest.approx([1.6, 1.6, 0.6, 0.6])  # flat outside the points
    edges = line.edges()
    assert edges is not None and edges[0][2] == pytest.approx(0.54)
    mid = thermostat.target_line(s, 60, 60)
    assert mid is not None and mid.values == pytest.approx([1.1])


def test_no_line_when_off_or_before_the_start_entropy_is_known() -> None:
    target = {"points": [[0, 0.5]], "of_start": True}
    assert thermostat.target_line(state("off", target=target), 0, 10) is None
    assert thermostat.target_line({**state(target=target), "start_entropy": None}, 0, 10) is None
    nats = thermostat.target_line({**state(target={"points": [[0, 0.7]]}), "start_entropy": None},
                                  0, 10)  # fmt: skip
    assert nats is not None and nats.values == [0.7, 0.7] and nats.edges() is None


def test_the_typed_schedule_is_parsed_or_refused_with_the_reason() -> None:
    assert thermostat.parse_schedule("0.5") == [[0, 0.5]]
    assert thermostat.parse_schedule(" 0:0.8, 300:0.1 ") == [[0, 0.8], [300, 0.1]]
    assert thermostat.format_schedule([[0, 0.8], [300, 0.1]]) == "0:0.8, 300:0.1"
    assert thermostat.format_schedule([[0, 0.5]]) == "0.5"
    for text, message in [
        ("", "enter a value"),
        ("0:0.8, 0:0.1", "increase"),
        ("a:0.8", "not a whole number"),
        ("0:-1", "positive"),
        ("0:x", "not a number"),
        ("0:0.8, 5", "not step:value"),
    ]:
        with pytest.raises(ValueError, match=message):
            thermostat.parse_schedule(text)


def test_the_thermostats_changes_are_markers_a_persons_are_labelled_lines() -> None:
    steps = [{"step": s, "control_version": 1 + (s >= 3) + (s >= 5), "stats": {"entropy": 1.0}}
             for s in range(8)]  # fmt: skip
    audit = [{"version": 2, "who": "admin"}, {"version": 3, "who": thermostat.WHO}]
    by_thermostat = thermostat.thermostat_versions(audit)
    assert by_thermostat == {3}
    line = thermostat.TargetLine([0, 7], [0.9, 0.9])
    fig = charts.entropy_reward(
        steps, changes=charts.version_changes(steps), target=line, by_thermostat=by_thermostat
    )
    names = [t.name for t in fig.data]
    assert "thermostat target" in names
    (marks,) = [t for t in fig.data if t.name == "thermostat change"]
    assert list(marks.x) == [5] and list(marks.y) == [1.0]
    labels = [a.text for a in fig.layout.annotations]
    assert "v2" in labels and "v3" not in labels  # the person's change only, as a line
