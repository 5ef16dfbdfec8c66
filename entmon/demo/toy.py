"""A tiny GRPO run on CPU whose policy entropy collapses: the trainer behind `entmon demo` (and
examples/grpo_toy.py, bench/reproduce.py).

It is written the way a user would wire entmon into their own loop: the policy loss comes from
`mon.policy_loss(...)` (vanilla PPO, Clip-Cov or KL-Cov, whichever the run's LIVE control says)
and each step ends with `mon.log(step, reward=...)`, where a control changed in the dashboard
takes effect.

The task, "crack the codes": a fixed pool of prompts (4 random digits each) hides one secret
4-digit code per prompt; both are drawn once from a seeded generator. The policy answers 4 digits
and is rewarded with the fraction of digits in the right place (verifiable, partial credit). No
prompt's code says anything about another's, so a code is only found by sampling it: the policy
starts near-uniform (entropy ~ln 10) with a reward of ~0.1, and plain GRPO sharpens onto whatever
digits happened to share a rewarded answer, so its entropy collapses long before most codes are
found. That is the paper's mechanism (Cui et al., 2025) in miniature: confident tokens with
high advantage (positive covariance) drive entropy down, and once the policy is deterministic a
group of identical answers has zero advantage and nothing more is learnt.

Run it on its own against a monitor (`entmon serve`) with examples/grpo_toy.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from client import Control, token_entropy

DIGITS = 10  # answer vocabulary: the digits 0-9
SEP = DIGITS  # separates the prompt from the answer; the input vocabulary is 11 tokens

# Loss knobs scaled to this toy (bench/reproduce.py and the README say why): the paper's ratios
# (clip_cov_ratio 2e-4, kl_cov_ratio 2e-3) select the floor of 1 token in a 512-token mini-batch.
# Both are scaled by 100, keeping the paper's 1:10 proportion between them.
TOY_CLIP_COV_RATIO = 2e-2
TOY_KL_COV_RATIO = 2e-1


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    """Every knob of the toy run; the defaults are the ones the README's figures use."""

    seed: int = 0
    steps: int = 300
    pool: int = 128  # prompts (each with its secret code) in the task
    code_len: int = 4  # digits per prompt and per answer
    prompts_per_step: int = 64  # P: prompts drawn (with replacement) per rollout
    group_size: int = 8  # G: answers sampled per prompt (GRPO group)
    mini_batches: int = 4  # policy updates per rollout, each on P / mini_batches groups
    lr: float = 1e-3  # Adam
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 4
    threads: int = 1  # torch threads: the tensors are tiny, more threads only contend

    def __post_init__(self) -> None:
        if self.prompts_per_step % self.mini_batches:
            raise ValueError("prompts_per_step must be a multiple of mini_batches")

    @property
    def tokens_per_step(self) -> int:
        return self.prompts_per_step * self.group_size * self.code_len


class DigitTokenizer:
    """What `Monitor(tokenizer=...)` needs to show the top tokens as text."""

    def decode(self, token_ids: list[int]) -> str:
        return "".join(str(t) if 0 <= t < DIGITS else "|" for t in token_ids)


class CodeTask:
    """A pool of prompts, each hiding a code; reward = fraction of code digits in place."""

    def __init__(self, pool: int, code_len: int, seed: int) -> None:
        g = torch.Generator().manual_seed(10_000 + seed)
        self.prompts = torch.randint(0, DIGITS, (pool, code_len), generator=g)  # pool, L
        self.codes = torch.randint(0, DIGITS, (pool, code_len), generator=g)  # pool, L

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randint(0, self.prompts.shape[0], (n,), generator=generator)  # n

    def reward(self, index: Tensor, answers: Tensor) -> Tensor:
        return (answers == self.codes[index]).float().mean(dim=-1)  # B


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention (nanoGPT's layout)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape  # batch, time, channels
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B, heads, T, D / heads
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # B, heads, T, D / heads
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class TinyPolicy(nn.Module):
    """A 2-layer transformer over [prompt, SEP, answer]; logits over the 10 digits."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.code_len = cfg.code_len
        self.tok = nn.Embedding(DIGITS + 1, cfg.d_model)
        self.pos = nn.Embedding(2 * cfg.code_len + 1, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, DIGITS)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]  # time
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # B, T, d
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # B, T, DIGITS

    def answer_logits(self, prompts: Tensor, answers: Tensor) -> Tensor:
        """Logits of each answer digit given the prompt and the digits before it."""
        B, L = answers.shape  # batch, code length
        sep = torch.full((B, 1), SEP, dtype=prompts.dtype, device=prompts.device)
        seq = torch.cat([prompts, sep, answers[:, :-1]], dim=1)  # B, 2L
        return self(seq)[:, L:]  # B, L, DIGITS: the positions from SEP on predict the answer

    @torch.no_grad()
    def sample(self, prompts: Tensor, generator: torch.Generator) -> Tensor:
        """Answers sampled at temperature 1, one digit at a time."""
        B, L = prompts.shape  # batch, code length
        sep = torch.full((B, 1), SEP, dtype=prompts.dtype, device=prompts.device)
        seq = torch.cat([prompts, sep], dim=1)  # B, L + 1
        for _ in range(L):
            probs = F.softmax(self(seq)[:, -1].float(), dim=-1)  # B, DIGITS
            seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return seq[:, L + 1 :]  # B, L


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO's outcome advantage: the reward normalised within its group of answers."""
    r = rewards.view(-1, group_size)  # P, G
    return ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)).view(-1)


class PolicyLossMonitor(Protocol):
    """The two calls of `client.Monitor` the trainer makes (bench/reproduce.py has an offline
    stand-in with the same two calls)."""

    control: Control

    def policy_loss(
        self,
        log_prob: Tensor,
        old_log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        entropy: Tensor | None = None,
        token_ids: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def log(self, step: int, **scalars: Any) -> None: ...


@dataclass
class StepRecord:
    """What the trainer saw at one step (for progress bars and the reproduction)."""

    step: int
    entropy: float  # mean token entropy (nats) over the step's updates
    reward: float  # mean reward of the rollout
    loss_mode: str  # the control the step ran under
    control_version: int
    seconds: float  # wall time of the step
    extra: dict[str, float] = field(default_factory=dict)


def train(
    cfg: ToyConfig,
    mon: PolicyLossMonitor,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
) -> list[StepRecord]:
    """Run `cfg.steps` GRPO steps; every policy loss goes through `mon`."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the policy's initial weights
    gen = torch.Generator().manual_seed(cfg.seed)  # prompts, samples, mini-batch order
    task = CodeTask(cfg.pool, cfg.code_len, cfg.seed)
    policy = TinyPolicy(cfg)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    P, G, L = cfg.prompts_per_step, cfg.group_size, cfg.code_len
    records = []
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        control = mon.control  # fixed for the whole step: changes apply at `log`
        index = task.draw(P, gen).repeat_interleave(G)  # B = P * G, groups contiguous
        prompts = task.prompts[index]  # B, L
        answers = policy.sample(prompts, gen)  # B, L
        rewards = task.reward(index, answers)  # B
        advantages = group_advantages(rewards, G).unsqueeze(1).expand(-1, L)  # B, L
        mask = torch.ones(P * G, L)  # every answer has L tokens; the API takes any 0/1 mask

        entropy_sum = grpo_update(
            mon, policy, opt, prompts, answers, advantages, mask,
            prompts_per_step=P, group_size=G, mini_batches=cfg.mini_batches, gen=gen,
        )  # fmt: skip
        reward = rewards.mean()
        mon.log(step, reward=reward, response_length=float(L))
        record = StepRecord(
            step=step,
            entropy=float(entropy_sum) / mask.sum().item(),  # the example's one host read
            reward=float(reward),
            loss_mode=control.loss_mode,
            control_version=control.version,
            seconds=time.perf_counter() - t0,
        )
        records.append(record)
        if on_step is not None:
            on_step(record)
    return records


class AnswerPolicy(Protocol):
    def answer_logits(self, prompts: Tensor, answers: Tensor) -> Tensor: ...


def grpo_update(
    mon: PolicyLossMonitor,
    policy: AnswerPolicy,
    opt: torch.optim.Optimizer,
    prompts: Tensor,
    answers: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    prompts_per_step: int,
    group_size: int,
    mini_batches: int,
    gen: torch.Generator,
    max_grad_norm: float | None = None,
) -> Tensor:
    """One step's updates (both testbeds): mini-batches of whole groups, every loss through
    `mon.policy_loss`. The old log-probs are computed on the same row sets (same shapes, so
    bit-identical to the first update's): the first update is exactly on-policy, the later ones
    are not, which is when KL-Cov's penalty acts. Returns the summed token entropy (a device
    tensor: no host read here)."""
    G = group_size
    groups = torch.randperm(prompts_per_step, generator=gen).view(mini_batches, -1)  # M, P / M
    batches = [(g.unsqueeze(1) * G + torch.arange(G)).view(-1) for g in groups]
    with torch.no_grad():
        olds = [_log_probs(policy.answer_logits(prompts[r], answers[r]), answers[r])
                for r in batches]  # fmt: skip
    entropy_sum = torch.zeros(())
    for rows, old_log_prob in zip(batches, olds, strict=True):
        logits = policy.answer_logits(prompts[rows], answers[rows])  # b, L, vocabulary
        log_prob = _log_probs(logits, answers[rows])  # b, L
        entropy = token_entropy(logits)  # b, L (no grad)
        loss, _ = mon.policy_loss(
            log_prob, old_log_prob, advantages[rows], mask[rows],
            entropy=entropy, token_ids=answers[rows],
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:  # as verl's actor (grad_clip); a 0-d tensor, no host read
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        entropy_sum += entropy.sum()
    return entropy_sum


def _log_probs(logits: Tensor, tokens: Tensor) -> Tensor:
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def progress_line(record: StepRecord, steps: int, start_entropy: float, width: int = 24) -> str:
    """One carriage-return progress line: the step as logged (the number the dashboard and the
    API show, from 0), bar and steps done, entropy (and % of start), reward, mode."""
    done = record.step + 1
    filled = round(width * done / steps)
    rel = record.entropy / start_entropy if start_entropy > 0 else math.nan
    return (
        f"\rstep {record.step} [{'#' * filled}{'.' * (width - filled)}] {done}/{steps} done "
        f"entropy {record.entropy:.3f} ({rel:4.0%} of start) reward {record.reward:.3f} "
        f"loss {record.loss_mode} (v{record.control_version}) {record.seconds:.2f} s/step "
    )
