from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import reproduce


def test_tiny_reproduction_writes_results_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = reproduce.main(
        ["--steps", "4", "--seeds", "0", "1", "--jobs", "1", "--out", str(tmp_path)]
    )
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [
        (m, s) for m in ("vanilla", "clip_cov", "kl_cov") for s in (0, 1)
    ]
    for run in result["runs"]:
        assert len(run["entropy"]) == 4 and all(math.isfinite(h) for h in run["entropy"])
        assert all(0 <= r <= 1 for r in run["reward"])
        selected = run["detached"] if run["method"] == "clip_cov" else run["penalised"]
        if run["method"] == "kl_cov":  # K = floor(0.2 * 512) in each of the 4 mini-batches
            assert selected == [4 * 102] * 4
        elif run["method"] == "clip_cov":  # at most n = floor(0.02 * 512) per mini-batch
            assert all(0 <= d <= 4 * 10 for d in selected)
        else:
            assert run["detached"] == run["penalised"] == [0] * 4
    assert result["knobs"]["kl_cov"]["kl_cov_ratio"] == 0.2
    saved = json.loads((tmp_path / "reproduce.json").read_text())
    assert saved["summary"]["methods"].keys() == {"vanilla", "clip_cov", "kl_cov"}
    assert (tmp_path / "reproduce.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "Clip-Cov" in out and "law on baseline seed 0 (smooth1)" in out


def test_a_switched_run_matches_its_baseline_until_the_switch(tmp_path: Path) -> None:
    result = reproduce.main(
        ["--steps", "6", "--seeds", "0", "--methods", "vanilla", "--switch-at", "3",
         "--jobs", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    base, switched = result["runs"]
    assert switched["method"] == "vanilla>kl_cov@3"
    assert switched["entropy"][:3] == base["entropy"][:3]  # same seed, same steps: bit-identical
    assert switched["entropy"][3:] != base["entropy"][3:]
    assert switched["penalised"] == [0, 0, 0] + [4 * 102] * 3
    assert [s["at"] for s in result["summary"]["switch"]] == [3]


def test_the_lm_testbed_runs_through_the_same_reproduction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from entmon.demo.testbed.model import TraceLM
    from entmon.demo.testbed.pretrain import PretrainConfig

    # a fresh model stands in for the cached pretrained one: the test skips the pretraining
    cfg = PretrainConfig()
    monkeypatch.setenv("ENTMON_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    torch.save(TraceLM(cfg.model).state_dict(), tmp_path / "cache" / f"testbed-lm-{cfg.key()}.pt")
    result = reproduce.main(
        ["--testbed", "lm", "--steps", "3", "--seeds", "0", "--jobs", "1", "--switch-at",
         "--set", "pool=8", "prompts_per_step=4", "--out", str(tmp_path)]
    )  # fmt: skip
    assert result["testbed"] == "lm"
    assert [r["method"] for r in result["runs"]] == ["vanilla", "clip_cov", "kl_cov"]
    tokens = 4 * 8 * 24  # prompts x group x answer tokens, in 2 mini-batches
    for run in result["runs"]:
        assert run["tokens"] == [tokens] * 3
        assert all(math.isfinite(h) for h in run["entropy"])
        if run["method"] == "kl_cov":  # K = floor(0.2 * 384) in each of the 2 mini-batches
            assert run["penalised"] == [2 * 76] * 3
        # the exact expected reward every 3 steps: step 0 of 3
        assert run["expected_reward"][1:] == [None, None] and 0 < run["expected_reward"][0] < 1
    assert result["knobs"]["kl_cov"]["kl_cov_ratio"] == 0.2
    assert (tmp_path / "reproduce-lm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "reproduce.json").exists()
    out = capsys.readouterr().out
    assert "lm: 2-layer d=64 transformer" in out and "pretrained model before RL" in out
    assert 0 <= result["summary"]["prior"]["top20_share"] <= 1
