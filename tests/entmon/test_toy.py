"""The demo's trainer, through a real `Monitor` and a real `entmon serve`: its reports arrive with
finite statistics, and its loss follows the run's live control."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch

from client import Monitor
from entmon.demo.toy import (
    DigitTokenizer,
    StepRecord,
    ToyConfig,
    group_advantages,
    progress_line,
    train,
)
from tests.conftest import ServerProcess


def stored_steps(url: str, run: str) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/v1/runs/{run}/steps")
    assert r.status_code == 200, r.text
    return list(r.json()["steps"])


def test_group_advantages_are_normalised_within_each_group() -> None:
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, 4)
    assert adv[:4].tolist() == pytest.approx([-0.866, 0.866, 0.866, -0.866], abs=1e-3)
    assert adv[4:].tolist() == [0.0] * 4  # a group of equal rewards teaches nothing


def test_three_steps_report_finite_statistics_to_the_monitor(
    server: ServerProcess, tmp_path: Path
) -> None:
    cfg = ToyConfig(steps=3)
    with Monitor(run="toy", url=server.url, tokenizer=DigitTokenizer(), spool_dir=tmp_path) as mon:
        records = train(cfg, mon)
    assert [r.step for r in records] == [0, 1, 2]
    # a fresh policy is close to uniform over the 10 digits, and finds about 1 digit in 10
    assert all(2.0 < r.entropy <= math.log(10) + 1e-6 for r in records)
    assert all(0.0 <= r.reward <= 0.3 for r in records)
    steps = stored_steps(server.url, "toy")
    assert [s["step"] for s in steps] == [0, 1, 2]
    for s, r in zip(steps, records, strict=True):
        stats = s["stats"]
        assert isinstance(stats, dict)
        assert stats["tokens"] == cfg.tokens_per_step  # every token of the 4 updates, once
        assert stats["entropy"] == pytest.approx(r.entropy, rel=1e-4)
        assert stats["reward"] == pytest.approx(r.reward, rel=1e-6)
        assert math.isfinite(stats["cov_mean"]) and math.isfinite(stats["policy_loss"])
    top = httpx.get(f"{server.url}/v1/runs/toy/top_tokens").json()["tokens"]
    assert top and all(t["text"] in "0123456789" and len(t["text"]) == 1 for t in top)


def test_the_loss_follows_the_control_set_on_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    url = f"{server.url}/v1/runs/live/control"
    r = httpx.put(
        url, json={"loss_mode": "kl_cov", "kl_cov_ratio": 0.2, "reason": "test"},
        headers={"If-Match": '"0"'},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    with Monitor(run="live", url=server.url, spool_dir=tmp_path) as mon:
        records = train(ToyConfig(steps=12), mon)  # margin for the first answer on a busy box
    modes = [r.loss_mode for r in records]
    assert modes[-1] == "kl_cov"  # picked up at a step boundary (the first poll or answer)
    assert modes == ["vanilla"] * modes.count("vanilla") + ["kl_cov"] * modes.count("kl_cov")
    for s, rec in zip(stored_steps(server.url, "live"), records, strict=True):
        penalised = s["stats"].get("penalised", 0)  # type: ignore[attr-defined]
        # K = floor(0.2 * 512) tokens in each of the 4 mini-batches under KL-Cov, none before
        assert penalised == (4 * 102 if rec.loss_mode == "kl_cov" else 0)
        assert s["control_version"] == rec.control_version


def test_progress_line_shows_step_entropy_reward_and_mode() -> None:
    rec = StepRecord(
        step=9, entropy=1.0, reward=0.25, loss_mode="kl_cov", control_version=2, seconds=0.1
    )
    line = progress_line(rec, 20, start_entropy=2.0)
    assert line.startswith("\rstep 9 [")  # the step as logged: the dashboard shows step 9 too
    assert "] 10/20 done " in line
    assert "entropy 1.000 ( 50% of start)" in line and "reward 0.250" in line
    assert "loss kl_cov (v2)" in line
