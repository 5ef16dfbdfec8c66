"""What the client sends validates against the service's schema."""

from __future__ import annotations

import json
import math
from typing import get_args, get_type_hints

import torch

from client.report import build_report, finalize
from entmon.wire.ids import DRIVER_RANK
from entmon.wire.layouts import HISTOGRAM_LAYOUTS
from entmon.wire.stats import STAT_NAMES
from monitor.report_codec import StepHistograms, StepStats, decode_reports
from monitor.routers.runs import HistogramName


def test_the_services_report_schema_has_one_field_per_statistic_of_the_wire_table() -> None:
    assert StepStats.__struct_fields__ == STAT_NAMES


def test_a_client_report_validates_against_the_server_schema() -> None:
    scalars = {name: 1.0 for name in STAT_NAMES} | {"lr": 3e-6, "grad_norm": torch.tensor(0.5)}
    scalars["entropy"] = torch.tensor(float("nan"))  # diverged: must travel, not crash
    scalars["reward"] = float("-inf")
    wire = json.dumps(finalize(build_report(7, 1, 2, 3, scalars)), allow_nan=False)
    (report,) = decode_reports(wire.encode())
    assert (report.step, report.rank, report.world_size, report.control_version) == (7, 1, 2, 3)
    assert report.stats.tokens == 1 and isinstance(report.stats.tokens, int)
    assert isinstance(report.stats.entropy, float) and math.isnan(report.stats.entropy)
    assert report.stats.reward == -math.inf
    assert report.user == {"lr": 3e-6, "grad_norm": 0.5}
    assert report.nonfinite_fields() == ["entropy", "reward"]


def test_a_drivers_report_validates_with_the_services_driver_rank() -> None:
    wire = json.dumps(finalize(build_report(3, DRIVER_RANK, 1, None, {"entropy": 0.5})))
    (report,) = decode_reports(wire.encode())
    assert (report.rank, report.control_version, report.stats.entropy) == (DRIVER_RANK, None, 0.5)


def test_every_named_histogram_has_its_schema_and_its_api_name() -> None:
    assert StepHistograms.__struct_fields__ == tuple(HISTOGRAM_LAYOUTS)
    assert get_args(HistogramName) == tuple(HISTOGRAM_LAYOUTS)
    hints = get_type_hints(StepHistograms)
    for name, layout in HISTOGRAM_LAYOUTS.items():
        schema = next(t for t in get_args(hints[name]) if t is not type(None))
        assert get_args(get_type_hints(schema)["layout"]) == (layout,), name
