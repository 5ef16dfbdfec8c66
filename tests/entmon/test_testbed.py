"""The LM testbed: its language and reward, the cached seeded pretraining, the cached sampler,
and GRPO through a real `Monitor` and `entmon serve`."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch

from bench.reproduce import OfflineMonitor
from client import Control, Monitor
from entmon.demo.testbed.grpo import LMConfig, train
from entmon.demo.testbed.model import ModelConfig, TraceLM
from entmon.demo.testbed.pretrain import PretrainConfig, load_pretrained, pretrain
from entmon.demo.testbed.task import (
    ANSWER_LEN,
    PROMPT_LEN,
    PromptPool,
    TraceTokenizer,
    all_op_sequences,
    demonstrations,
    finals,
    reward,
    write_traces,
)
from entmon.demo.toy import group_advantages, grpo_update
from tests.conftest import ServerProcess

TINY = PretrainConfig(model=ModelConfig(d_model=16, n_layers=1, n_heads=2), steps=3, batch=8)


def encode(text: str) -> torch.Tensor:
    return torch.tensor([["0123456789+-=,>|".index(c) for c in text]])


def test_the_reward_needs_a_valid_trace_that_reaches_the_target() -> None:
    prompt = encode("34521>5|")  # reach 5 from 3 4 5 2 1 with + and - (mod 10)
    right = encode("3+4=7,7+5=2,2+2=4,4+1=5,")  # 3+4+5+2+1 = 15
    assert TraceTokenizer().decode(right[0].tolist()) == "3+4=7,7+5=2,2+2=4,4+1=5,"
    assert right.shape[1] == ANSWER_LEN and prompt.shape[1] == PROMPT_LEN
    also_right = encode("3+4=7,7-5=2,2+2=4,4+1=5,")  # 3+4-5+2+1 = 5
    wrong_target = encode("3+4=7,7-5=2,2+2=4,4-1=3,")  # valid, ends on 3
    miscomputed = encode("3+4=7,7+5=3,3+2=5,5+1=6,")  # 7+5 is 2, not 3
    miscopied = encode("3+4=7,7+5=2,2+3=5,5+1=6,")  # the prompt's 4th digit is 2
    batch = torch.cat([right, also_right, wrong_target, miscomputed, miscopied])
    assert reward(prompt.expand(5, -1), batch).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_every_prompt_has_a_reachable_target_and_demonstrations_are_seeded() -> None:
    pool = PromptPool(64, seed=3)
    numbers, targets = pool.prompts[:, :5], pool.prompts[:, 6]
    assert (finals(numbers) == targets.unsqueeze(1)).any(dim=1).all()
    a = demonstrations(32, torch.Generator().manual_seed(1), plus_bias=0.75, aim=1.0, error_rate=0)
    b = demonstrations(32, torch.Generator().manual_seed(1), plus_bias=0.75, aim=1.0, error_rate=0)
    assert torch.equal(a, b)
    # aimed, error-free demonstrations are all rewarded
    assert reward(a[:, :PROMPT_LEN], a[:, PROMPT_LEN:]).tolist() == [1.0] * 32


def test_the_cached_sampler_matches_the_full_forward() -> None:
    torch.manual_seed(0)
    model = TraceLM(ModelConfig(d_model=16, n_layers=2, n_heads=2)).eval()
    prompts = PromptPool(4, seed=0).prompts
    answers = model.sample(prompts, torch.Generator().manual_seed(0))
    assert answers.shape == (4, ANSWER_LEN)
    caches: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]
    with torch.no_grad():
        full = model.answer_logits(prompts, answers)
        steps = [model._extend(prompts, 0, caches)[:, -1:]]
        for j in range(ANSWER_LEN - 1):
            steps.append(model._extend(answers[:, j : j + 1], PROMPT_LEN + j, caches))
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)


def test_the_exact_expected_reward_is_the_probability_of_every_rewarded_answer() -> None:
    """Brute force over the 16 error-free traces of each prompt, scored by `reward` itself."""
    torch.manual_seed(0)
    model = TraceLM(ModelConfig(d_model=16, n_layers=2, n_heads=2)).eval()
    prompts = PromptPool(6, seed=0).prompts
    ops = all_op_sequences().bool()
    expected = []
    for prompt in prompts:
        numbers = prompt[:5].expand(16, -1)
        none = torch.zeros(16, 4, dtype=torch.bool)
        traces = write_traces(numbers, ops, none, torch.zeros(16, 4, dtype=torch.long))
        many = prompt.expand(16, -1)
        with torch.no_grad():
            log_p = model.answer_logits(many, traces).log_softmax(-1)
        p = log_p.gather(-1, traces.unsqueeze(-1)).squeeze(-1).sum(-1).exp()
        expected.append(float((p * reward(many, traces)).sum()))
    got = model.expected_reward(prompts)
    assert got.shape == (6,)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert all(0 < e < 1 for e in expected)  # every prompt has a rewarded trace


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3])
def test_the_update_clips_the_gradient_norm(max_grad_norm: float | None) -> None:
    torch.manual_seed(0)
    model = TraceLM(ModelConfig(d_model=16, n_layers=1, n_heads=2))
    gen = torch.Generator().manual_seed(0)
    prompts = PromptPool(4, seed=0).prompts.repeat_interleave(4, dim=0)  # 4 groups of 4
    answers = model.sample(prompts, gen)
    rewards = torch.tensor([1.0, 0, 0, 0] * 4)
    advantages = group_advantages(rewards, 4).unsqueeze(1).expand(-1, ANSWER_LEN)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is the gradient itself
    mon = OfflineMonitor(Control())  # the client's loss under a fixed control, no server
    grpo_update(
        mon, model, opt, prompts, answers, advantages, torch.ones(16, ANSWER_LEN),
        prompts_per_step=4, group_size=4, mini_batches=1, gen=gen, max_grad_norm=max_grad_norm,
    )  # fmt: skip
    moved = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())
    if max_grad_norm is None:
        assert moved > 1e-2
    else:
        assert 0 < moved <= max_grad_norm * (1 + 1e-4)


def test_pretraining_is_seeded_and_cached_by_config(tmp_path: Path) -> None:
    first = load_pretrained(TINY, tmp_path)
    files = list(tmp_path.glob("testbed-lm-*.pt"))
    assert len(files) == 1 and TINY.key() in files[0].name
    again = pretrain(TINY)  # the same config trains the same weights
    cached = load_pretrained(TINY, tmp_path)  # and the cache returns them
    for p, q, r in zip(first.parameters(), again.parameters(), cached.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)
    other = PretrainConfig(model=TINY.model, steps=3, batch=8, seed=1)
    assert other.key() != TINY.key()
    load_pretrained(other, tmp_path)
    assert len(list(tmp_path.glob("testbed-lm-*.pt"))) == 2


def test_grpo_steps_report_finite_statistics_to_the_monitor(
    server: ServerProcess, tmp_path: Path
) -> None:
    cfg = LMConfig(
        steps=2, pool=8, prompts_per_step=4, group_size=4, pretrain=TINY, cache_dir=tmp_path
    )
    with Monitor(run="lm", url=server.url, tokenizer=TraceTokenizer(), spool_dir=tmp_path) as mon:
        records = train(cfg, mon)
    assert [r.step for r in records] == [0, 1]
    # the exact expected reward is measured every `eval_every` (3) steps: step 0 only
    assert 0 < records[0].extra["expected_reward"] < 1 and records[1].extra == {}
    assert all(0 < r.entropy <= math.log(16) + 1e-6 for r in records)
    r = httpx.get(f"{server.url}/v1/runs/lm/steps")
    steps = r.json()["steps"]
    assert [s["step"] for s in steps] == [0, 1]
    for s, rec in zip(steps, records, strict=True):
        assert s["stats"]["tokens"] == cfg.tokens_per_step
        assert s["stats"]["entropy"] == pytest.approx(rec.entropy, rel=1e-4)
        assert s["stats"]["reward"] == pytest.approx(rec.reward, rel=1e-6)
        assert math.isfinite(s["stats"]["cov_mean"])
