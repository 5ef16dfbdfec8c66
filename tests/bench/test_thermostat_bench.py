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


@pytest.mark.timeout(900)
def test_the_lm_testbed_runs_the_thermostat_bench_into_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from entmon.demo.testbed.model import TraceLM
    from entmon.demo.testbed.pretrain import PretrainConfig

    # a fresh model stands in for the cached pretrained one: the test skips the pretraining
    cfg = PretrainConfig()
    monkeypatch.setenv("ENTMON_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    torch.save(TraceLM(cfg.model).state_dict(), tmp_path / "cache" / f"testbed-lm-{cfg.key()}.pt")
    result = thermostat.main(
        ["--testbed", "lm", "--steps", "3", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path),
         "--methods", "fixed", "thermostat", "--targets", "schedule",
         "--config", "pool=8", "prompts_per_step=4"]
    )  # fmt: skip
    assert result["testbed"] == "lm"
    assert result["config"]["fixed"] == "clip_cov"  # docs/reproduce-lm.json's best
    assert result["config"]["testbed_config"]["pool"] == 8
    assert [(r["method"], len(r["entropy"])) for r in result["runs"]] == [
        ("fixed", 3), ("thermostat", 3)
    ]  # fmt: skip
    assert all(math.isfinite(h) for r in result["runs"] for h in r["entropy"])
    assert result["report"].startswith("lm: 2-layer d=64 transformer")
    assert (tmp_path / "thermostat-lm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "thermostat-lm.json").read_text())["testbed"] == "lm"
    assert not (tmp_path / "thermostat.json").exists()  # the toy's files are left alone


def test_runs_reused_from_the_reproduction_must_be_the_same_training() -> None:
    # docs/reproduce-lm.json trained 64 prompts; a run on 8 is another training
    with pytest.raises(SystemExit, match=r"reproduce-lm\.json is not this training: config pool"):
        thermostat.from_reproduction([0], 3, "lm", {"pool": 8})
    with pytest.raises(SystemExit, match="no runs of seeds \\[7\\]"):
        thermostat.from_reproduction([0, 7], 3, "lm")
    with pytest.raises(SystemExit, match="300 steps, fewer than 301"):
        thermostat.from_reproduction([0], 301, "lm")
    runs = thermostat.from_reproduction([0, 1, 2], 300, "lm")
    assert sorted((r["method"], r["seed"]) for r in runs) == [
        ("fixed", 0), ("fixed", 1), ("fixed", 2), ("vanilla", 0), ("vanilla", 1), ("vanilla", 2)
    ]  # fmt: skip
    assert {r["from"] for r in runs} == {"docs/reproduce-lm.json"}
