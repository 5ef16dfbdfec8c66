"""`EntmonGRPOTrainer` on CPU, offline: a tiny random Qwen2 and a word-level tokenizer built
here (nothing from the hub), a toy reward, and a real `entmon serve` with real Redis."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import GRPOConfig, GRPOTrainer

from client import Control, Monitor
from client.integrations.trl import (
    TRL_ENTROPY,
    EntmonGRPOTrainer,
    TrlConfigError,
    aggregation,
    kl_to_reference,
    unsupported_options,
)
from client.spool import Spool, spool_path
from tests.client.conftest import FAST, stored_steps, unused_url
from tests.conftest import ServerProcess

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(45)]
PAD, EOS = 0, 1
WAIT_S = 60.0  # bound on waiting for the monitor to store a report (a loaded machine)


@pytest.fixture(autouse=True)
def _offline_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No hub access (the hub reads HF_HUB_OFFLINE once, at import: set its constant too), and
    one torch thread, as on the project's shared 2-core machines."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def count_w7(completions: list[str], **_: Any) -> list[float]:
    """The toy reward: how often the completion says "w7"."""
    return [float(c.split().count("w7")) for c in completions]


def grpo_config(tmp_path: Path, **overrides: Any) -> GRPOConfig:
    knobs: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], bf16=False, fp16=False,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        num_iterations=2, max_steps=8, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    return GRPOConfig(**(knobs | overrides))


def prompts() -> Dataset:
    return Dataset.from_dict({"prompt": [f"w{i} w{i + 1} w{i + 2}" for i in range(3, 40)]})


def reporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "entmon-reporter" and t.is_alive()]


def put_control(url: str, run: str, **knobs: Any) -> int:
    current = httpx.get(f"{url}/v1/runs/{run}/control")
    assert current.status_code == 200, current.text
    r = httpx.put(
        f"{url}/v1/runs/{run}/control",
        json={**knobs, "reason": "test_trl"},
        headers={"If-Match": current.headers["ETag"]},
    )
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def wait_for_stored(url: str, run: str, step: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(s["step"] == step for s in stored_steps(url, run)):
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} of {run} not stored after {WAIT_S}s")


class WaitForAnswers(TrainerCallback):
    """Each step waits until the monitor has stored the step before it: the client has then had
    an answer (with the newest control) before this step ends, which bounds when a change can
    apply."""

    def __init__(self, url: str, run: str) -> None:
        self.url, self.run = url, run

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if state.global_step > 1:
            wait_for_stored(self.url, self.run, state.global_step - 1)


class SwitchToKLCov(WaitForAnswers):
    """At the end of step `at`, switch the run to KL-Cov through the API."""

    def __init__(self, url: str, run: str, at: int) -> None:
        super().__init__(url, run)
        self.at = at
        self.version: int | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        super().on_step_end(args, state, control)
        if state.global_step == self.at:
            self.version = put_control(
                self.url, self.run, loss_mode="kl_cov", kl_cov_ratio=0.25, ppo_kl_coef=1.0
            )


def test_every_step_reports_and_a_control_change_mid_run_applies_at_a_step_boundary(
    server: ServerProcess, tmp_path: Path
) -> None:
    run, at, steps = "trl-live", 4, 8
    # Clip-Cov on half the tokens, with bounds that make every unclipped token a candidate.
    clip_version = put_control(
        server.url, run, loss_mode="clip_cov", clip_cov_ratio=0.5, clip_cov_lb=-1e3, clip_cov_ub=1e3
    )
    switch = SwitchToKLCov(server.url, run, at)
    # Two micro-batches of 2 completions per optimizer step, one rollout of 4 per 2 steps.
    args = grpo_config(
        tmp_path, max_steps=steps, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    trainer = EntmonGRPOTrainer(
        model=tiny_model(), reward_funcs=count_w7, args=args, train_dataset=prompts(),
        processing_class=tiny_tokenizer(), callbacks=[switch], run=run, monitor_url=server.url,
    )  # fmt: skip
    trainer.train()
    assert not reporter_threads()  # train() closed the monitor it created, thread and all

    stored = {int(s["step"]): s for s in stored_steps(server.url, run)}  # type: ignore[call-overload]
    assert sorted(stored) == list(range(1, steps + 1))  # every optimizer step, once
    versions = [stored[s]["control_version"] for s in range(1, steps + 1)]
    assert versions == sorted(versions) and versions[0] == 0  # the defaults until it hears
    assert switch.version == clip_version + 1
    # Step 1's answer arrived before step 2 ended (the callback waited), so step 3 is Clip-Cov.
    assert versions[2] == clip_version
    first_kl = 1 + versions.index(switch.version)
    assert at < first_kl <= at + 3  # the next step, or one or two later: never inside a step
    for s in range(1, steps + 1):
        doc = stored[s]
        stats: dict[str, Any] = doc["stats"]
        assert stats["tokens"] > 0 and 0 < stats["entropy"] < 4.0  # near ln(48) = 3.87
        assert stats["reward"] >= 0.0
        if s % 2 == 1:  # a rollout's first update (of num_iterations=2) is on-policy
            assert stats["abs_log_ratio_mean"] < 1e-6
        if doc["control_version"] == clip_version:  # Clip-Cov: half the tokens detached
            assert stats["detached"] > 0 and stats["candidates"] >= stats["detached"]
            assert stats.get("penalised", 0) == 0
        elif doc["control_version"] == switch.version:  # KL-Cov: a quarter penalised
            assert stats["penalised"] > 0 and stats.get("detached", 0) == 0
            if s % 2 == 0:  # its second update is off-policy: the penalty bites
                assert stats["penalised_abs_log_ratio_mean"] > 0
        else:  # vanilla
            assert stats.get("detached", 0) == stats.get("penalised", 0) == 0
    # a micro-batch holds at most 2 x 8 tokens: a report of more adds both of its step's
    assert any(stored[s]["stats"]["tokens"] > 16 for s in stored)
    top = httpx.get(f"{server.url}/v1/runs/{run}/top_tokens").json()["tokens"]
    assert top and all(t["text"] in WORDS for t in top)  # decoded with the trainer's tokenizer


def test_the_thermostat_drives_a_trl_run_and_its_changes_apply(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The thermostat on the entropy bonus, through TRL unchanged: a target above the policy's
    entropy (ln 48 = 3.87 nats at most) makes it raise entropy_coeff; TRL's steps run its
    versions, the bonus through the score-function estimate (TRL's entropy has no gradient)."""
    run, steps = "trl-thermo", 8
    r = httpx.put(
        f"{server.url}/v1/runs/{run}/thermostat",
        json={"enabled": True, "settings": {"target": {"points": [[0, 10.0]]},
                                             "knob": "entropy_coeff"}},
        headers={"If-Match": '"0"'},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    args = grpo_config(tmp_path, max_steps=steps)
    trainer = EntmonGRPOTrainer(
        model=tiny_model(), reward_funcs=count_w7, args=args, train_dataset=prompts(),
        processing_class=tiny_tokenizer(), callbacks=[WaitForAnswers(server.url, run)], run=run,
        monitor_url=server.url,
    )  # fmt: skip
    trainer.train()
    stored = stored_steps(server.url, run)
    assert [s["step"] for s in stored] == list(range(1, steps + 1))
    audit = httpx.get(f"{server.url}/v1/runs/{run}/audit").json()["entries"]
    by_thermostat = {e["version"]: e["new"] for e in audit if e["who"] == "thermostat"}
    ran = [s["control_version"] for s in stored]
    applied = [v for v in ran if v in by_thermostat]
    assert applied, (ran, audit)  # steps ran the thermostat's versions
    assert all(by_thermostat[v]["entropy_coeff"] > 0 for v in applied)
    state = httpx.get(f"{server.url}/v1/runs/{run}/thermostat").json()
    assert state["status"] == "running", state["reason"]  # zero-advantage steps are no fault
    assert state["last_step"] >= steps - 1


# -- the loss of one micro-batch, without generation ------------------------------------------


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    with Monitor(run="unit", url=unused_url(), spool_dir=tmp_path, config=FAST) as mon:
        yield mon  # nothing listens there: reports wait in the spool


def trainers(
    tmp_path: Path, monitor: Monitor, loss_type: str = "bnpo", **config: Any
) -> tuple[EntmonGRPOTrainer, GRPOTrainer]:
    """Ours and TRL's on the same weights and config, in training with two micro-batches per
    optimizer step and a generation batch of four micro-batches (TRL's "dapo" normaliser)."""
    model: Qwen2ForCausalLM | str = tiny_model()
    if config.get("beta"):  # TRL loads the reference model from the policy's path
        assert isinstance(model, Qwen2ForCausalLM)
        model.save_pretrained(tmp_path / "tiny")
        model = str(tmp_path / "tiny")
    args = grpo_config(
        tmp_path, loss_type=loss_type, gradient_accumulation_steps=2, steps_per_generation=4,
        **config,
    )  # fmt: skip
    kwargs: dict[str, Any] = dict(
        model=model, reward_funcs=count_w7, train_dataset=prompts(),
        processing_class=tiny_tokenizer(), args=args,
    )  # fmt: skip
    ours, theirs = EntmonGRPOTrainer(monitor=monitor, **kwargs), GRPOTrainer(**kwargs)
    for t in (ours, theirs):
        t.model.train()
        t.current_gradient_accumulation_steps = 2  # set by the training loop
    return ours, theirs


def micro_batch(trainer: GRPOTrainer, *, off_policy: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    B, P, T = 4, 3, 6  # completions, prompt tokens, completion tokens
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[1, 4:] = 0  # a short completion, right-padded
    completion_mask[3, 2:] = 0
    inputs: dict[str, Any] = {
        "prompt_ids": torch.randint(3, len(WORDS), (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(3, len(WORDS), (B, T), generator=g).masked_fill(
            completion_mask == 0, PAD
        ),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.8, -1.1]),  # not summing to 0 (grpo on-policy)
        # valid tokens of the generation batch (4 micro-batches), summed over processes; this
        # one holds 18
        "num_items_in_batch": torch.tensor(77),
    }
    if off_policy:  # old log-probs a little off, so some ratios leave [0.8, 1.2]
        logps = logprobs(trainer, inputs)
        noise = 0.3 * torch.randn(B, T, generator=g)  # B, T: minus the log-ratio
        assert ((noise.exp() - 1).abs()[completion_mask > 0] > 0.2).any()  # the clip binds
        inputs["old_per_token_logps"] = logps + noise
    return inputs


@torch.no_grad()
def logprobs(trainer: GRPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    T = inputs["completion_ids"].shape[1]
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, T)
    return logps  # B, T


def grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo", "luspo"])
@pytest.mark.parametrize(
    ("off_policy", "config", "training"),
    [
        (False, {}, True),
        (True, {}, True),
        # TRL's KL to the reference model, with and without its importance weight (default on)
        (False, {"beta": 0.04}, True),
        (True, {"beta": 0.04, "use_bias_correction_kl": False}, True),
        (True, {"beta": 0.04}, False),  # evaluation: no accumulation, the whole batch
    ],
)
def test_vanilla_loss_and_gradient_equal_trls_for_each_loss_type(
    tmp_path: Path,
    monitor: Monitor,
    loss_type: str,
    off_policy: bool,
    config: dict[str, Any],
    training: bool,
) -> None:
    ours, theirs = trainers(tmp_path, monitor, loss_type, **config)
    inputs = micro_batch(ours, off_policy=off_policy)
    if config:  # a reference a little off the policy
        g = torch.Generator().manual_seed(2)
        noise = 0.2 * torch.randn(inputs["completion_ids"].shape, generator=g)
        inputs["ref_per_token_logps"] = logprobs(ours, inputs) + noise
    results = []
    for trainer in (ours, theirs):
        trainer.model.train(training)
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        results.append((loss.detach(), grads(trainer.model)))
    (loss, grad), (ref_loss, ref_grad) = results
    assert loss.item() != 0.0 and torch.count_nonzero(grad) > 0
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def test_each_loss_type_aggregates_as_trl_does() -> None:
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])  # B, T; 0 at padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    knobs: dict[str, Any] = dict(
        accumulation=2, max_completion_length=4, window_tokens=torch.tensor(5.0)
    )
    got = {
        t: aggregation(t, mask, **knobs)(per_token).item()
        for t in ("dapo", "bnpo", "grpo", "dr_grpo", "luspo")
    }
    assert got == {
        "dapo": 10 / 5,  # the window's tokens: accumulation already in them
        "bnpo": 10 / 4 / 2,  # the micro-batch's tokens
        "grpo": (6 / 3 + 4 / 1) / 2 / 2,  # each completion's token mean, then their mean
        "dr_grpo": 10 / (2 * 4) / 2,  # completions x max_completion_length
        "luspo": (6 + 4) / 2 / 2,  # each completion's token sum, then their mean
    }
    with pytest.raises(ValueError, match="sapo"):
        aggregation("sapo", mask, **knobs)


def test_the_step_reports_trls_entropy_beside_the_token_mean(
    tmp_path: Path, monitor: Monitor
) -> None:
    ours, theirs = trainers(tmp_path, monitor)
    first = micro_batch(ours, off_policy=True)
    second = dict(first, completion_mask=first["completion_mask"].clone())
    second["completion_mask"][0, 1:] = 0  # micro-batches of 18 and 13 tokens: means differ
    for trainer in (ours, theirs):
        for inputs in (first, second):
            trainer._compute_loss(trainer.model, inputs)
    trl_entropy = theirs._metrics["train"]["entropy"]  # what TRL logs: mean of this list
    assert len(trl_entropy) == 2
    scalars = ours._step_scalars()
    assert float(scalars[TRL_ENTROPY]) == pytest.approx(sum(trl_entropy) / 2, rel=1e-12)
    assert TRL_ENTROPY not in ours._step_scalars()  # one step's micro-batches only
    # entmon's own `entropy` statistic is the token mean: another number here.
    out = monitor._accumulator.pack().unpack()  # type: ignore[union-attr]
    assert out["stats"]["entropy"] != pytest.approx(float(scalars[TRL_ENTROPY]), rel=1e-6)


def test_clip_cov_on_every_token_zeroes_the_gradient(tmp_path: Path, monitor: Monitor) -> None:
    ours, _ = trainers(tmp_path, monitor)
    inputs = micro_batch(ours, off_policy=False)  # on-policy: no token is PPO-clipped
    ours.monitor.control = Control(
        loss_mode="clip_cov", clip_cov_ratio=1.0, clip_cov_lb=-1e3, clip_cov_ub=1e3
    )
    ours.model.zero_grad()
    ours._compute_loss(ours.model, inputs).backward()
    assert torch.count_nonzero(grads(ours.model)) == 0  # every token detached
    ours.monitor.control = Control()
    ours.model.zero_grad()
    ours._compute_loss(ours.model, inputs).backward()
    assert torch.count_nonzero(grads(ours.model)) > 0


def test_kl_cov_penalty_is_its_selection_times_the_log_ratio(
    tmp_path: Path, monitor: Monitor, caplog: pytest.LogCaptureFixture
) -> None:
    ours, _ = trainers(tmp_path, monitor)
    inputs = micro_batch(ours, off_policy=True)
    losses = {}
    for coef in (0.0, 2.0):  # every token selected: the loss grows by coef * mean |log-ratio|
        ours.monitor.control = Control(loss_mode="kl_cov", kl_cov_ratio=1.0, ppo_kl_coef=coef)
        losses[coef] = ours._compute_loss(ours.model, inputs).detach()
    logps = logprobs(ours, inputs)
    valid = inputs["completion_mask"] > 0
    abs_lr = (logps - inputs["old_per_token_logps"]).abs()[valid].mean()
    torch.testing.assert_close(losses[2.0] - losses[0.0], 2.0 * abs_lr / 2)  # / accumulation 2
    assert "KL-Cov on-policy" not in caplog.text
    del inputs["old_per_token_logps"]  # what TRL passes on-policy
    with caplog.at_level(logging.WARNING, logger="client"):
        ours._compute_loss(ours.model, inputs)
    assert "KL-Cov on-policy" in caplog.text and "num_iterations > 1" in caplog.text


def test_kl_to_reference_is_trls_k3_token_mean() -> None:
    g = torch.Generator().manual_seed(0)
    logp, ref, old = (torch.randn(3, 5, generator=g) - 2 for _ in range(3))
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    d = ref - logp
    k3 = torch.exp(d) - d - 1
    expected = (k3 * mask).sum() / mask.sum()
    got = kl_to_reference(logp, ref, old, mask, bias_corrected=False)
    torch.testing.assert_close(got, expected)
    corrected = (k3 * torch.exp(logp - old) * mask).sum() / mask.sum()
    torch.testing.assert_close(
        kl_to_reference(logp, ref, old, mask, bias_corrected=True), corrected
    )
    assert kl_to_reference(logp, logp, old, mask, bias_corrected=False) == 0.0


def test_options_entmons_loss_cannot_honour_are_refused(tmp_path: Path, monitor: Monitor) -> None:
    assert unsupported_options(grpo_config(tmp_path)) == []  # TRL's defaults are fine
    assert unsupported_options(grpo_config(tmp_path, loss_type="luspo")) == []  # token level
    assert unsupported_options(
        grpo_config(tmp_path, loss_type="luspo", importance_sampling_level="sequence")
    ) == ["importance_sampling_level: entmon's loss is per token (set 'token')"]
    bad = grpo_config(tmp_path, loss_type="sapo", top_entropy_quantile=0.2, entropy_coef=0.01)
    problems = unsupported_options(bad)
    assert [p.split(":")[0] for p in problems] == [
        "loss_type='sapo'", "top_entropy_quantile", "entropy_coef / use_adaptive_entropy"
    ]  # fmt: skip
    with pytest.raises(TrlConfigError, match="top_entropy_quantile"):
        EntmonGRPOTrainer(
            model=tiny_model(), reward_funcs=count_w7, args=bad, train_dataset=prompts(),
            processing_class=tiny_tokenizer(), monitor=monitor,
        )  # fmt: skip
    with pytest.raises(TypeError, match="exactly one of monitor= and run="):
        EntmonGRPOTrainer(model=tiny_model(), reward_funcs=count_w7, args=grpo_config(tmp_path))


def test_a_dead_monitor_and_an_untested_trl_cost_training_nothing(
    tmp_path: Path,
    monitor: Monitor,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trl.__version__", "1.14.0")
    with caplog.at_level(logging.WARNING, logger="client"):
        trainer = EntmonGRPOTrainer(
            model=tiny_model(), reward_funcs=count_w7, args=grpo_config(tmp_path, max_steps=2),
            train_dataset=prompts(), processing_class=tiny_tokenizer(), monitor=monitor,
        )  # fmt: skip
    assert "TRL 1.14.0 is outside the tested range [1.16, 1.17)" in caplog.text
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(reporter_threads()) == 1  # a monitor given to the trainer is the caller's to close
    monitor.close(timeout=0.5)
    assert not reporter_threads()
    spool = Spool(spool_path(tmp_path, "unit", 0))
    spool.open(create=False)
    try:
        lines, _ = spool.read(max_reports=100, max_bytes=1 << 20)
    finally:
        spool.close()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # kept for `entmon replay`
