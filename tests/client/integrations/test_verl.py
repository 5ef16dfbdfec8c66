"""loss_mode "entmon" in verl 0.9.1: verl's own config objects and aggregation, entmon's live
control from a real `entmon serve`, the step boundaries the loss finds, and the two ways verl
loads the module."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config import ActorConfig, PolicyLossConfig

from client import Monitor
from client.control import Control
from client.errors import EntmonError
from client.integrations import verl as integration
from tests.client.conftest import FAST, stored_steps, unused_url
from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "integrations" / "verl.md"
AGG_MODES = [
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
]
CONTROL_WAIT_S = 60.0  # generous: a loaded machine; the loop ends as soon as the control is in


def make(seed: int, B: int = 6, T: int = 48) -> tuple[torch.Tensor, ...]:
    """Off-policy inputs as verl's ppo_loss passes them: bool mask, per-sequence advantages."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous() * 2
    lengths = torch.randint(T // 3, T + 1, (B, 1), generator=g)
    mask = torch.arange(T) < lengths
    weights = 0.5 + torch.rand(B, T, generator=g)  # rollout importance weights
    return lp, old, adv, mask, weights


def actor_config(c: Control | None, batch_info: dict[str, Any], **fields: Any) -> ActorConfig:
    """verl's ActorConfig with the control's knobs (None: loss_mode entmon, verl's defaults) and
    any other `fields` of ActorConfig."""
    knobs: dict[str, Any] = {"loss_mode": "entmon"}
    clip = {}
    if c is not None:
        # the clip ratios and entropy_coeff are actor fields in verl, not policy-loss ones
        knobs = {k: v for k, v in c.knobs().items() if k in PolicyLossConfig.__dataclass_fields__}
        clip = {"clip_ratio_low": c.clip_ratio_low, "clip_ratio_high": c.clip_ratio_high}
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        policy_loss=PolicyLossConfig(**knobs),
        **clip,
        **fields,
    )
    config.global_batch_info.update(batch_info)  # what verl's ppo_loss sets before each call
    return config


def call(
    mode: str,
    config: ActorConfig,
    agg: str,
    lp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The registered loss `mode` as verl's ppo_loss calls it: loss, gradient, metrics."""
    leaf = lp.detach().clone().requires_grad_()
    loss, metrics = get_policy_loss_fn(mode)(
        old_log_prob=old,
        log_prob=leaf,
        advantages=adv,
        response_mask=mask,
        loss_agg_mode=agg,
        config=config,
        rollout_is_weights=weights,
    )
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


def batch_info(mask: torch.Tensor, *, dp_size: int = 2) -> dict[str, Any]:
    """As verl's engine sets it: the mini-batch's valid tokens and sequences over all ranks."""
    B = mask.shape[0]
    return {
        "dp_size": dp_size,
        "batch_num_tokens": int(mask.sum()) * dp_size + 5,
        "global_batch_size": B * dp_size,
        "loss_scale_factor": None,
    }


def put_control(url: str, run: str, if_match: int, **knobs: Any) -> None:
    r = httpx.put(
        f"{url}/v1/runs/{run}/control",
        json=knobs | {"reason": "test"},
        headers={"If-Match": f'"{if_match}"'},
    )
    assert r.status_code == 200, r.text


def apply_control(mon: Monitor, version: int) -> None:
    """Step boundaries (empty steps) until the Monitor has applied `version`."""
    deadline = time.monotonic() + CONTROL_WAIT_S
    step = 0
    while mon.control.version != version:
        assert time.monotonic() < deadline, f"control {version} never arrived"
        mon.log(step)
        step += 1
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_attached_monitor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no Monitor and no message said yet in this process."""
    monkeypatch.setattr(integration, "_log_once_on_rank0", None)
    integration.detach()
    yield
    mon = integration.detach()
    if mon is not None:
        mon.close(timeout=5)


def test_entmon_is_a_registered_verl_loss_mode() -> None:
    assert get_policy_loss_fn("entmon") is integration.compute_policy_loss_entmon


# Clip-Cov budget above its candidates: every candidate is detached, so verl's random draw
# (global RNG, a different stream from ours) picks the same tokens.
CONTROLS = {
    "kl_cov": Control(loss_mode="kl_cov", kl_cov_ratio=0.05, ppo_kl_coef=0.7, clip_ratio_high=0.28),
    "clip_cov": Control(
        loss_mode="clip_cov",
        clip_cov_ratio=0.5,
        clip_cov_lb=0.5,
        clip_cov_ub=0.9,
        clip_ratio_high=0.28,
    ),
    "vanilla": Control(loss_mode="vanilla", clip_ratio_low=0.1, clip_ratio_high=0.28),
}


@pytest.mark.parametrize("mode", list(CONTROLS))
def test_with_equal_knobs_entmon_is_verls_builtin_mode_for_every_aggregation(
    shared_server: ServerProcess, mode: str
) -> None:
    c = CONTROLS[mode]
    run = f"verl-parity-{mode}"
    put_control(shared_server.url, run, 0, **c.knobs())
    mon = Monitor(run, url=shared_server.url, config=FAST)
    integration.attach(mon, updates_per_step=None)
    apply_control(mon, 1)
    assert mon.control.knobs() == c.knobs()
    lp, old, adv, mask, weights = make(7)
    info = batch_info(mask)
    for agg in AGG_MODES:
        for w in (None, weights):
            v_loss, v_grad, v_metrics = call(
                mode, actor_config(c, info), agg, lp, old, adv, mask, w
            )
            o_loss, o_grad, o_metrics = call(
                "entmon", actor_config(None, info), agg, lp, old, adv, mask, w
            )
            torch.testing.assert_close(o_loss, v_loss, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(o_grad, v_grad, rtol=1e-5, atol=1e-9)
            assert o_metrics["actor/entmon_control_version"] == 1
            for key in ("actor/ppo_kl", "actor/pg_clipfrac"):
                if key in v_metrics:
                    assert float(o_metrics[key]) == pytest.approx(v_metrics[key], abs=1e-6)
    # The knobs were live: verl's mode with its own defaults gives another loss.
    verl_defaults = actor_config(Control(loss_mode=mode), info)
    default, _, _ = call(mode, verl_defaults, "token-mean", lp, old, adv, mask, None)
    ours, _, _ = call("entmon", actor_config(None, info), "token-mean", lp, old, adv, mask, None)
    assert not torch.allclose(ours, default)
    if mode == "clip_cov":  # the draw did not matter: every candidate, and some, were detached
        _, stats = mon.policy_loss(lp, old, adv, mask)
        assert 0 < int(stats["candidates"]) == int(stats["detached"]) <= int(stats["budget"])


def kl_cov_reference(
    c: Control, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    info = batch_info(mask, dp_size=1)
    loss, _, _ = call("kl_cov", actor_config(c, info), "token-mean", lp, old, adv, mask, None)
    return loss


def test_a_knob_changed_through_the_api_changes_the_next_step_of_a_monitor_from_env(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, run = shared_server.url, "verl-live"
    monkeypatch.setenv("ENTMON_RUN", run)
    monkeypatch.setenv("ENTMON_URL", url)
    first = Control(loss_mode="kl_cov", kl_cov_ratio=0.01, ppo_kl_coef=1.0)
    second = Control(loss_mode="kl_cov", kl_cov_ratio=0.3, ppo_kl_coef=2.0)
    put_control(url, run, 0, **first.knobs())
    lp, old, adv, mask, _ = make(11)
    config = actor_config(None, batch_info(mask, dp_size=1))  # one update per call: one step
    deadline = time.monotonic() + CONTROL_WAIT_S
    changed = False
    by_version: dict[int, torch.Tensor] = {}
    while 2 not in by_version:
        assert time.monotonic() < deadline, f"controls applied: {sorted(by_version)}"
        loss, _, metrics = call("entmon", config, "token-mean", lp, old, adv, mask, None)
        by_version.setdefault(metrics["actor/entmon_control_version"], loss)
        if 1 in by_version and not changed:
            put_control(url, run, 1, kl_cov_ratio=second.kl_cov_ratio, ppo_kl_coef=2.0)
            changed = True
        time.sleep(0.05)
    mon = integration.detach()
    assert mon is not None and mon.run == run
    mon.close(timeout=10)
    # Before the monitor answered: the service's defaults (vanilla); then each control exactly.
    service_defaults = actor_config(Control(), batch_info(mask, dp_size=1))
    defaults, _, _ = call("vanilla", service_defaults, "token-mean", lp, old, adv, mask, None)
    torch.testing.assert_close(by_version[0], defaults)
    torch.testing.assert_close(by_version[1], kl_cov_reference(first, lp, old, adv, mask))
    torch.testing.assert_close(by_version[2], kl_cov_reference(second, lp, old, adv, mask))
    assert not torch.allclose(by_version[1], by_version[2])
    steps = stored_steps(url, run)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))  # verl's global steps
    last = steps[-1]
    assert last["control_version"] == 2
    assert last["stats"]["penalised"] == int(second.kl_cov_ratio * int(mask.sum()))


def test_the_loss_closes_a_step_every_updates_per_step_updates(
    shared_server: ServerProcess,
) -> None:
    run = "verl-steps"
    mon = Monitor(run, url=shared_server.url, config=FAST)
    integration.attach(mon, updates_per_step=2, first_step=5)
    # 2 ranks, 8 sequences per mini-batch: 4 rows per update on this rank, 2 per micro-batch.
    batches = [make(20 + i, B=2) for i in range(9)]
    info = {"dp_size": 2, "global_batch_size": 8, "batch_num_tokens": 100}
    for lp, old, adv, mask, _ in batches:
        call("entmon", actor_config(None, info), "token-mean", lp, old, adv, mask, None)
    integration.detach()
    mon.close(timeout=10)
    steps = stored_steps(shared_server.url, run)
    assert [s["step"] for s in steps] == [5, 6]  # the 9th micro-batch starts step 7
    for s, group in zip(steps, (batches[0:4], batches[4:8]), strict=True):
        assert s["stats"]["tokens"] == sum(int(b[3].sum()) for b in group)


def test_no_batch_info_reports_no_step_and_says_so(
    shared_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    mon = Monitor("verl-no-info", url=shared_server.url, config=FAST)
    integration.attach(mon)
    lp, old, adv, mask, _ = make(30)
    with caplog.at_level(logging.WARNING, logger="client"):
        for _ in range(3):
            call("entmon", actor_config(None, {}), "token-mean", lp, old, adv, mask, None)
    integration.detach()
    mon.close(timeout=10)
    assert stored_steps(shared_server.url, "verl-no-info") == []
    assert sum("updates_per_step=None" in r.getMessage() for r in caplog.records) == 1


def test_an_unreachable_monitor_never_stops_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTMON_RUN", "verl-offline")
    monkeypatch.setenv("ENTMON_URL", unused_url())
    lp, old, adv, mask, _ = make(40)
    info = batch_info(mask, dp_size=1)
    want, _, _ = call(
        "vanilla", actor_config(Control(), info), "token-mean", lp, old, adv, mask, None
    )
    for _ in range(3):  # three steps, reported to nowhere (they wait in the spool)
        got, _, metrics = call(
            "entmon", actor_config(None, info), "token-mean", lp, old, adv, mask, None
        )
        torch.testing.assert_close(got, want)
        assert metrics["actor/entmon_control_version"] == 0


def test_the_vanilla_loss_dual_clips_at_the_configs_clip_ratio_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENTMON_RUN", "verl-dual-clip")
    monkeypatch.setenv("ENTMON_URL", unused_url())
    lp, old, adv, mask, _ = make(41)
    old = lp + 3.0 * (old - lp)  # large ratios: the dual clip binds for negative advantages
    info = batch_info(mask, dp_size=1)
    losses = {}
    for c in (10.0, 3.0, 1.5):
        theirs = actor_config(Control(), info, clip_ratio_c=c)  # verl's `actor.clip_ratio_c`
        ours = actor_config(None, info, clip_ratio_c=c)
        want, want_grad, _ = call("vanilla", theirs, "token-mean", lp, old, adv, mask, None)
        got, grad, _ = call("entmon", ours, "token-mean", lp, old, adv, mask, None)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(grad, want_grad)
        losses[c] = float(got)
    assert len(set(losses.values())) == 3  # each bound gave its own loss
    bad = actor_config(None, info, clip_ratio_c=1.0)  # verl asserts > 1; entmon refuses it too
    with pytest.raises(ValueError, match="clip_ratio_c"):
        call("entmon", bad, "token-mean", lp, old, adv, mask, None)


def test_without_a_monitor_the_first_call_says_how_to_get_one() -> None:
    lp, old, adv, mask, _ = make(50)
    with pytest.raises(EntmonError, match="ENTMON_RUN"):
        call("entmon", actor_config(None, {}), "token-mean", lp, old, adv, mask, None)


def test_a_bad_step_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTMON_RUN", "verl-bad")
    monkeypatch.setenv("ENTMON_URL", unused_url())
    monkeypatch.setenv("ENTMON_VERL_UPDATES_PER_STEP", "0")
    lp, old, adv, mask, _ = make(51)
    with pytest.raises(EntmonError, match="ENTMON_VERL_UPDATES_PER_STEP"):
        call("entmon", actor_config(None, {}), "token-mean", lp, old, adv, mask, None)


PROBE = (
    "import verl; from verl.trainer.ppo.core_algos import get_policy_loss_fn; "
    "from verl.utils.tracking import Tracking; "
    "print(get_policy_loss_fn('entmon').__module__, getattr(Tracking, '__entmon_wrapped__', False))"
)
LOADED = "client.integrations.verl True"  # the loss registered, the driver's Tracking wrapped


def probe(env: dict[str, str], path: list[Path]) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that imports verl and looks up the mode, nothing imported by hand."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "ENTMON_"))}
    clean["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True,
        timeout=120, check=False, cwd=path[-1],
    )  # fmt: skip


def test_verl_loads_the_module_through_the_entry_point_entmon_declares(tmp_path: Path) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = '[project.entry-points."verl.plugins"]\nentmon = "client.integrations.verl"\n'
    assert section in pyproject
    declared = {"entmon": "client.integrations.verl"}
    # An installed distribution declaring the same entry point (the checkout's is not installed).
    dist = tmp_path / "entmon_probe-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: entmon-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[verl.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items())
    )
    result = probe({}, [tmp_path, ROOT])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == LOADED
    # verl's own switch turns the discovery off: the mode is then unknown.
    off = probe({"VERL_USE_EXTERNAL_PLUGINS": "none"}, [tmp_path, ROOT])
    assert off.returncode != 0 and "Unsupported loss mode: entmon" in off.stderr


def test_verl_loads_the_module_named_in_verl_use_external_modules() -> None:
    result = probe(
        {
            "VERL_USE_EXTERNAL_MODULES": "client.integrations.verl",
            "VERL_USE_EXTERNAL_PLUGINS": "none",
        },
        [ROOT],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == LOADED


def doc_command() -> list[str]:
    """The `key=value` overrides of the documented verl command line."""
    text = DOC.read_text()
    block = re.search(r"```bash\n(python3? -m verl\.trainer\.main_ppo.*?)```", text, re.S)
    assert block is not None, "the doc shows a main_ppo command"
    words = block.group(1).replace("\\\n", " ").split()
    return [w for w in words if "=" in w]


def test_the_documented_command_line_is_a_valid_verl_config_selecting_entmon() -> None:
    import verl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    overrides = doc_command()
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert get_policy_loss_fn(actor.policy_loss.loss_mode) is integration.compute_policy_loss_entmon
    env = OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env.env_vars)
    assert isinstance(env, dict) and env["ENTMON_RUN"]
    # The documented updates per step are verl's: train_batch_size / ppo_mini_batch_size * epochs.
    a = cfg.actor_rollout_ref.actor
    expected = cfg.data.train_batch_size // a.ppo_mini_batch_size * a.ppo_epochs
    assert int(env["ENTMON_VERL_UPDATES_PER_STEP"]) == expected


def test_the_documented_snippet_runs_and_reports_two_steps(
    shared_server: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    monkeypatch.setenv("ENTMON_URL", shared_server.url)
    exec(compile(block.group(1), str(DOC), "exec"), {})
    assert "actor/entmon_control_version" in capsys.readouterr().out
    assert [s["step"] for s in stored_steps(shared_server.url, "verl-snippet")] == [1, 2]


def test_two_fsdp_ranks_apply_a_control_change_at_the_same_step(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    url, run, steps = shared_server.url, "verl-ddp", 120
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    env = os.environ | {
        "ENTMON_SPOOL_DIR": str(tmp_path / "spool"),
        "ENTMON_RUN": run,
        "ENTMON_URL": url,
    }
    worker = [sys.executable, "-m", "tests.client.integrations.verl_rank_worker"]
    procs = [
        subprocess.Popen(
            [*worker, str(r), "2", str(tmp_path / "init"), str(steps), str(outs[r])],
            cwd=ROOT,
            env=env,
        )
        for r in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = httpx.get(f"{url}/v1/runs/{run}")
            if r.status_code == 200 and (r.json()["last_step"] or 0) >= 20:
                break
            time.sleep(0.1)
        put_control(url, run, 0, loss_mode="kl_cov", kl_cov_ratio=0.1)
        codes = [p.wait(180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    results = [json.loads(out.read_text()) for out in outs]
    assert [(r["rank"], r["world_size"]) for r in results] == [(0, 2), (1, 2)]
    used = [r["used"] for r in results]
    assert used[0] == used[1]  # the same version in every micro-batch on both ranks
    per_step = used[0][::2]
    assert used[0][1::2] == per_step  # and never within a step
    switch = per_step.index(1)
    assert switch >= 20 and per_step == [0] * switch + [1] * (steps - switch)
    stored = stored_steps(url, run)
    assert [s["step"] for s in stored] == list(range(1, steps + 1))
    assert [s["ranks"] for s in stored] == [2] * steps
    assert [s["control_version"] for s in stored] == per_step
    assert all((s["stats"].get("penalised") or 0) > 0 for s in stored[switch:])
