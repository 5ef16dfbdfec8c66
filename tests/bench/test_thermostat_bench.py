from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import thermostat


@pytest.mark.timeout(900)  # two toy runs, imports and a plot: minutes on a machine shared 6 ways
def test_tiny_benchmark_runs_the_controllers_and_writes_figures(tmp_path: Path) -> None:
    # Two trained runs of 6 steps (the machine may be loaded); vanilla and the fixed method come
    # from the reproduction's saved curves, with every figure computed on them.
    result = thermostat.main(
        ["--steps", "6", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path),
         "--methods", "vanilla", "fixed", "skywork", "thermostat", "--targets", "schedule",
         "--from-reproduction"]
    )  # fmt: skip
    got = [(r["method"], r["target_mode"]) for r in result["runs"]]
    assert got == [("vanilla", "none"), ("fixed", "none"), ("skywork", "schedule"),
                   ("thermostat", "schedule")]  # fmt: skip
    for run in result["runs"]:
        assert len(run["entropy"]) == 6 and all(math.isfinite(h) for h in run["entropy"])
        assert run["coeff"][:2] == [0.0, 0.0]  # a decision on step k runs from step k + 2
    skywork = result["runs"][2]
    assert skywork["coeff"][2] in (0.0, thermostat.SKYWORK_DELTA)  # one delta, two steps late
    saved = json.loads((tmp_path / "thermostat.json").read_text())
    rows = saved["summary"]["schedule"]
    assert rows.keys() == {"vanilla", "fixed", "skywork", "thermostat"}
    assert {"track", "track_last150", "sign_changes", "exploding_steps", "reward_last50"} <= rows[
        "thermostat"
    ]["per_seed"]["0"].keys()
    assert (tmp_path / "thermostat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "thermostat (ours)" in saved["report"]
    lines = (tmp_path / "thermostat-runs.jsonl").read_text().splitlines()
    assert lines == []  # --jobs 1 keeps runs in memory; the file is for parallel runs
    merged = thermostat.main(
        ["--methods", "vanilla", "fixed", "skywork", "thermostat", "--seeds", "0", "--steps", "6",
         "--jobs", "1", "--out", str(tmp_path / "m"), "--targets", "schedule",
         "--merge", str(tmp_path / "thermostat.json")]
    )  # fmt: skip
    assert [r["method"] for r in merged["runs"]] == ["vanilla", "fixed", "skywork", "thermostat"]


def test_metrics_count_sign_changes_and_tracking_after_the_target_is_reached() -> None:
    start = 2.0
    n = 300
    target = thermostat.target_for("schedule", n)
    T = [target.at(k, start) or 0.0 for k in range(n)]
    wiggle = [0.02 if (k // 10) % 2 else -0.02 for k in range(n)]  # +-2%, flips every 10 steps
    H = [start] * 5 + [
        t * (1 + w) if k >= 20 else start for k, (t, w) in enumerate(zip(T, wiggle, strict=True))
    ][5:]
    run = {"entropy": H, "reward": [0.5] * n, "exploding": [False] * n}
    m = thermostat.metrics(run, "schedule")
    assert m["reached_at"] == 20
    assert m["track"] is not None and abs(m["track"] - 0.02) < 1e-9
    assert m["sign_changes"] == 27  # 28 blocks of 10 steps from step 20
    assert m["sign_changes_5pct"] == 0  # all inside +-5%
    assert m["reward_last50"] == 0.5
