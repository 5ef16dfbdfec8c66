"""The tiny transformer language model of the testbed: nanoGPT's layout over the task's 16
tokens, the same blocks as the toy's policy (entmon.demo.toy.Block)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entmon.demo.testbed.task import ANSWER_LEN, PROMPT_LEN, VOCAB, reaching_traces
from entmon.demo.toy import Block

MAX_LEN = PROMPT_LEN + ANSWER_LEN  # positions ever seen


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4


class TraceLM(nn.Module):
    """Next-token logits over the task's vocabulary."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, cfg.d_model)
        self.pos = nn.Embedding(MAX_LEN, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]  # time
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # B, T, d
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # B, T, VOCAB

    def answer_logits(self, prompts: Tensor, answers: Tensor) -> Tensor:
        """Logits of each answer token given the prompt and the answer tokens before it."""
        seq = torch.cat([prompts, answers[:, :-1]], dim=1)  # B, P + A - 1
        return self(seq)[:, prompts.shape[1] - 1 :]  # B, A, VOCAB

    @torch.no_grad()
    def expected_reward(self, prompts: Tensor) -> Tensor:
        """Each prompt's exact expected reward (B,): the probability of its target-reaching
        traces, with no sampling noise (the answers that score are few enough to enumerate)."""
        traces, reach = reaching_traces(prompts)  # B, S, A and B, S
        which, seq = reach.nonzero(as_tuple=True)  # ~4 of the 16 traces reach the target
        answers = traces[which, seq]  # N, A
        logits = self.answer_logits(prompts[which], answers)
        log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, answers.unsqueeze(-1))
        per_trace = log_p.squeeze(-1).sum(-1).exp()  # N
        return per_trace.new_zeros(prompts.shape[0]).index_add_(0, which, per_trace)

    @torch.no_grad()
    def sample(self, prompts: Tensor, generator: torch.Generator) -> Tensor:
        """Answers of ANSWER_LEN tokens sampled at temperature 1, with a key/value cache (each
        new token costs one position, not the whole prefix: sampling is most of a step)."""
        caches: list[tuple[Tensor, Tensor] | None] = [None] * len(self.blocks)
        x, start = prompts, 0
        out = []
        for _ in range(ANSWER_LEN):
            logits = self._extend(x, start, caches)[:, -1]  # B, VOCAB
            start += x.shape[1]
            x = torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)
            out.append(x)
        return torch.cat(out, dim=1)  # B, ANSWER_LEN

    def _extend(
        self, idx: Tensor, start: int, caches: list[tuple[Tensor, Tensor] | None]
    ) -> Tensor:
        """forward() over positions start.. of a sequence whose earlier keys/values are cached."""
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(start, start + T, device=idx.device))
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            B, _, D = x.shape
            qkv = block.qkv(block.ln1(x)).view(B, T, 3, block.heads, D // block.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B, heads, T, D / heads
            cached = caches[i]
            if cached is not None:
                k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
            caches[i] = (k, v)
            # a new single token sees every cached position; a first chunk is causal
            y = F.scaled_dot_product_attention(q, k, v, is_causal=cached is None and T > 1)
            x = x + block.proj(y.transpose(1, 2).reshape(B, T, D))
            x = x + block.mlp(block.ln2(x))
        return self.head(self.ln(x))
