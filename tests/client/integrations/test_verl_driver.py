"""verl's driver: the entropy, reward and response length verl's trainer logs through its own
`Tracking`, built as the trainer builds it (verl's composed config of the documented command),
reach the run for verl's global steps and merge with the actor ranks' reports of those steps,
on a real `entmon serve`."""

from __future__ import annotations

import inspect
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss
from verl.trainer.ppo.metric_utils import compute_data_metrics
from verl.utils.tracking import Tracking

from client import DRIVER_RANK, Monitor
from client.integrations import verl as integration
from client.integrations import verl_driver
from client.log_once import LogOnce
from tests.client.conftest import FAST, stored_steps, unused_url
from tests.client.integrations.test_verl import actor_config, call, doc_command, make
from tests.conftest import ServerProcess

UPDATES_PER_STEP = 4  # the documented command: train_batch_size 256 // mini-batch 64 * 1 epoch
DP = 2  # actor ranks
ROWS = 2  # rows per update on each rank
RUN_OVERRIDE = "+ray_kwargs.ray_init.runtime_env.env_vars.ENTMON_RUN="


def trainer_config(run: str, *extra: str) -> dict[str, Any]:
    """What verl's trainer hands Tracking: its composed config of the documented command line
    (the run renamed, `extra` overrides added), resolved to plain containers."""
    overrides = [w for w in doc_command() if not w.startswith(RUN_OVERRIDE)]
    overrides += [RUN_OVERRIDE + run, *extra]
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def tracking(config: dict[str, Any]) -> Tracking:
    """As verl's trainer builds it (RayPPOTrainer.fit, the V1 trainer's fit)."""
    return Tracking(
        project_name=config["trainer"]["project_name"],
        experiment_name=config["trainer"]["experiment_name"],
        default_backend=["console"],  # the documented default less wandb (no account here)
        config=config,
    )


def step_metrics(seed: int, B: int = 8, P: int = 6, T: int = 24) -> tuple[dict[str, Any], dict]:
    """verl's metrics of one global step, computed by verl's own functions from a rollout batch
    as the trainer does; and the values entmon should take from them, computed here."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T) < lengths).long()  # B, T
    scores = torch.zeros(B, T)
    correct = (torch.rand(B, generator=g) > 0.5).float()  # B; the verifier's 0/1
    scores[torch.arange(B), lengths[:, 0] - 1] = correct  # on each response's last token
    rewards = scores - 0.01 * mask  # a KL-in-reward penalty: not the score
    entropy = torch.rand(B, T, generator=g) * 2
    batch = DataProto.from_dict(
        tensors={
            "prompts": torch.ones(B, P, dtype=torch.long),
            "responses": torch.ones(B, T, dtype=torch.long),
            "attention_mask": torch.cat([torch.ones(B, P, dtype=torch.long), mask], dim=1),
            "response_mask": mask,
            "token_level_scores": scores,
            "token_level_rewards": rewards,
            "advantages": torch.randn(B, T, generator=g) * mask,
            "returns": torch.randn(B, T, generator=g) * mask,
        }
    )
    metrics: dict[str, Any] = {
        "actor/entropy": agg_loss(entropy, mask, loss_agg_mode="token-mean").item(),
        "actor/pg_loss": 0.1,
        "training/global_step": seed,
        **compute_data_metrics(batch=batch, use_critic=False),
    }
    expected = {
        "entropy": float((entropy * mask).sum() / mask.sum()),
        "reward": float(correct.mean()),
        "response_length": float(lengths.float().mean()),
    }
    return metrics, expected


def reporter_threads() -> int:
    return sum(t.name == "entmon-reporter" for t in threading.enumerate())


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test says its warnings anew and starts with no Monitor attached to the loss."""
    monkeypatch.setattr(verl_driver, "_log_once", LogOnce(enabled=True))
    monkeypatch.setattr(integration, "_log_once_on_rank0", None)
    integration.detach()
    yield
    mon = integration.detach()
    if mon is not None:
        mon.close(timeout=5)


def test_importing_the_plugin_wraps_verls_tracking_once() -> None:
    assert getattr(Tracking, "__entmon_wrapped__", False)
    assert verl_driver.install()  # a second time: nothing more
    assert Tracking.log.__wrapped__.__qualname__ == "Tracking.log"  # type: ignore[attr-defined]
    assert "__wrapped__" not in vars(Tracking.log.__wrapped__)  # type: ignore[attr-defined]


def test_the_drivers_entropy_and_reward_merge_with_the_actor_ranks_steps(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, run = shared_server.url, "verl-driver"
    monkeypatch.setenv("ENTMON_URL", url)  # the run comes from the config's Ray env_vars
    # Actor rank 0 through the loss as verl's engine calls it; rank 1 the same way by hand.
    rank0 = Monitor(run, url=url, rank=0, world_size=DP, sync_control=False, config=FAST)
    rank1 = Monitor(run, url=url, rank=1, world_size=DP, sync_control=False, config=FAST)
    integration.attach(rank0, updates_per_step=UPDATES_PER_STEP, first_step=1)
    info = {"dp_size": DP, "global_batch_size": DP * ROWS, "batch_num_tokens": 100}
    threads = reporter_threads()
    t = tracking(trainer_config(run))
    assert reporter_threads() == threads + 1  # the driver's Monitor
    t.log(data={"val-core/gsm8k/reward/mean@1": 0.3}, step=0)  # val_before_train: no report
    expected, tokens = {}, {}
    for step in (1, 2, 3):
        tokens[step] = 0
        for u in range(UPDATES_PER_STEP):  # the step's actor updates, then verl's log
            lp, old, adv, mask, _ = make(100 * step + u, B=ROWS)
            call("entmon", actor_config(None, info), "token-mean", lp, old, adv, mask, None)
            lp1, old1, adv1, mask1, _ = make(100 * step + u + 50, B=ROWS)
            rank1.policy_loss(lp1, old1, adv1, mask1)
            tokens[step] += int(mask.sum()) + int(mask1.sum())
        rank1.log(step)
        metrics, expected[step] = step_metrics(step)
        t.log(data=metrics, step=step)
    t.finish()  # what verl's TaskRunner does at the end: the driver sends what it holds
    assert reporter_threads() == threads
    for mon in (integration.detach(), rank1):
        assert mon is not None
        mon.close(timeout=10)
    steps = stored_steps(url, run)
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        assert (s["ranks"], s["driver"], s["control_version"]) == (2, True, 0)
        stats = s["stats"]
        assert stats["tokens"] == tokens[s["step"]]  # both ranks' loss statistics
        assert stats["cov_mean"] is not None and stats["policy_loss"] is not None
        for name, value in expected[s["step"]].items():
            assert stats[name] == pytest.approx(value, rel=1e-6), name
    summary = httpx.get(f"{url}/v1/runs/{run}").json()
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert summary["latest"]["step"] == 3 and summary["latest"]["stats"]["entropy"] is not None
    law_points = [(s["stats"]["entropy"], s["stats"]["reward"]) for s in steps]
    assert len(set(law_points)) == 3  # the R-vs-H pairs the law fits, one per step


def test_a_driver_that_cannot_reach_the_monitor_spools_and_closes_with_tracking(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTMON_URL", unused_url())
    threads = reporter_threads()
    t = tracking(trainer_config("verl-driver-offline"))
    for step in (1, 2):
        t.log(data=step_metrics(step)[0], step=step)  # returns: a queue append
    del t  # verl's V0 trainer never calls finish: Tracking.__del__ does
    assert reporter_threads() == threads
    lines = (spool_dir / f"verl-driver-offline.rank{DRIVER_RANK}.jsonl").read_text().splitlines()
    reports = [json.loads(line) for line in lines[1:]]  # after the header
    assert [(r["step"], r["rank"], r["control_version"]) for r in reports] == [
        (1, DRIVER_RANK, None),
        (2, DRIVER_RANK, None),
    ]
    assert set(reports[0]["stats"]) == {"entropy", "reward", "response_length"}


def test_another_loss_mode_or_no_run_leaves_tracking_as_verl_made_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ENTMON_URL", unused_url())
    threads = reporter_threads()
    vanilla = trainer_config(
        "verl-driver-vanilla", "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"
    )
    t = tracking(vanilla)
    assert reporter_threads() == threads
    t.log(data=step_metrics(1)[0], step=1)
    t.finish()
    assert not caplog.records
    no_run = trainer_config("verl-driver-no-run")
    del no_run["ray_kwargs"]["ray_init"]["runtime_env"]["env_vars"]["ENTMON_RUN"]
    with caplog.at_level(logging.WARNING, logger="client"):
        t = tracking(no_run)
        t.log(data=step_metrics(1)[0], step=1)
        t.finish()
    assert reporter_threads() == threads
    assert "ENTMON_RUN is not set in verl's trainer process" in caplog.text


def test_the_driver_says_when_the_actor_ranks_will_number_other_steps(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ENTMON_URL", unused_url())
    monkeypatch.setenv("ENTMON_VERL_UPDATES_PER_STEP", "1")  # the environment wins
    config = trainer_config("verl-driver-steps", "trainer.critic_warmup=2")
    with caplog.at_level(logging.WARNING, logger="client"):
        t = tracking(config)
        for step in (1, 2, 3):
            t.log(data=step_metrics(step)[0], step=step)
        t.finish()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("set ENTMON_VERL_UPDATES_PER_STEP=4" in m for m in messages) == 1
    assert sum("set ENTMON_VERL_FIRST_STEP=3" in m for m in messages) == 1


def test_a_summed_entropy_is_not_reported_as_entropy(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, run = shared_server.url, "verl-driver-token-sum"
    monkeypatch.setenv("ENTMON_URL", url)
    config = trainer_config(run, "actor_rollout_ref.actor.loss_agg_mode=token-sum")
    with caplog.at_level(logging.WARNING, logger="client"):
        t = tracking(config)
        metrics, expected = step_metrics(1)
        t.log(data=metrics, step=1)
        t.finish()
    assert "actor.loss_agg_mode=token-sum" in caplog.text
    (step,) = stored_steps(url, run)
    assert "entropy" not in step["stats"]
    assert step["stats"]["reward"] == pytest.approx(expected["reward"])


class LikeTracking:
    """Tracking's surface as the wrap knows it, to see what install does with another verl."""

    def __init__(self, project_name, experiment_name, default_backend="console", config=None):  # type: ignore[no-untyped-def]
        self.logged: list[tuple[dict[str, Any], int]] = []

    def log(self, data, step, backend=None):  # type: ignore[no-untyped-def]
        self.logged.append((data, step))

    def finish(self, exit_code=0):  # type: ignore[no-untyped-def]
        pass


@pytest.mark.parametrize("version", ["0.9.0", "0.10.0"])
def test_another_verl_version_is_left_alone(
    version: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = dict(vars(LikeTracking))
    monkeypatch.setattr(verl_driver, "Tracking", LikeTracking)
    monkeypatch.setattr(verl_driver.verl, "__version__", version)
    with caplog.at_level(logging.WARNING, logger="client"):
        assert not verl_driver.install()
    assert dict(vars(LikeTracking)) == original
    assert f"verl {version}" in caplog.text and "no entropy or reward" in caplog.text


def test_a_tracking_whose_signatures_changed_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class Changed(LikeTracking):
        def log(self, metrics, step, backend=None):  # type: ignore[no-untyped-def,override]
            pass

    monkeypatch.setattr(verl_driver, "Tracking", Changed)
    assert not verl_driver.install()
    assert "__entmon_wrapped__" not in vars(Changed)
    assert list(inspect.signature(Changed.log).parameters)[1] == "metrics"
