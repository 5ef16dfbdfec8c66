"""Which tokens Clip-Cov detaches and KL-Cov penalises (ALGORITHM.md sections 3-5).

Sync-free: the budget (n for Clip-Cov, K for KL-Cov) depends on the number of valid tokens, a
device value. Instead of reading it to the host, as the reference does with `.item()`, we take
a `topk` of a size the host knows from the shapes (the budget at a full mask, which bounds the
real one) and keep the first `budget` entries with a device-side comparison.

- KL-Cov: the K valid tokens with the largest covariance (`topk`, deterministic). On CPU, when
  equal covariances straddle the K-th place, verl's own packed `torch.topk`, so that the tie
  resolves as in verl (client/MATH.md, "Parity with verl").
- Clip-Cov: min(n, #candidates) candidates uniformly at random. Every token draws a random
  31-bit key from the caller's `torch.Generator` (two per 64-bit draw: on CPU a draw costs
  more than any other pass of the loss); the n candidates with the largest keys are a uniformly
  random subset, the same distribution as the reference's `randperm` prefix (not the same draw).

Scope. "micro_batch" (the reference, default): the means and the budget are those of the tensors
passed in. "global": means, token count and budget are all-reduced over the default process
group, and the threshold is the global K-th largest covariance (KL-Cov) or the global n-th
smallest hash key (Clip-Cov), so the selection no longer depends on how the batch is split over
ranks (verl issue #7829). To make it independent of the micro-batch split as well, call
`select_tokens` once on the whole mini-batch (a no-grad forward gives current log-probs; verl PR
#7830 does the same) and pass each micro-batch its `Selection.rows(...)`. In global scope the
Clip-Cov keys are a hash of (seed, global row, position), so a token gets the same key on
whichever rank it lands; the seed comes from rank 0's generator. Global scope reads one number
to the host (the global token count, which sizes the exchanged top-k) and does a few small
collectives (sums, top-k; for Clip-Cov also the seed and the row offsets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from client.batch import Batch
from client.covariance import COVARIANCE_DTYPE, Centred, Scope, centred, is_global
from client.topk import top_k

_NEVER = -(1 << 31)  # Clip-Cov key of a non-candidate: below every (odd) int32 key
_M31 = (1 << 31) - 1
_HASH_MULT = 0x45D9F3B  # < 2**27: products of 31-bit values stay below 2**58, no overflow
_KEY_NEVER = (1 << 62) + 1  # above every 62-bit hash key
_LOWEST = torch.finfo(torch.float32).min  # KL-Cov score of valid tokens of covariance -inf
_NEG_INF_BITS = -8388608  # 0xFF800000: float32 -inf as int32


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection for one batch (all device tensors, no host sync).

    picked: bool [B, T], tokens detached (Clip-Cov) or penalised (KL-Cov).
    candidates: bool [B, T], tokens eligible (Clip-Cov: inside (lb, ub) and not PPO-clipped;
        KL-Cov: every valid token).
    budget: 0-d int64, n or K of the selection unit.
    count: 0-d int64, the number of picked tokens when known without counting `picked`
        (None: count them).
    """

    picked: Tensor
    candidates: Tensor
    budget: Tensor
    count: Tensor | None = None

    def rows(self, index: slice | Tensor) -> Selection:
        """The selection restricted to some rows (a micro-batch of its mini-batch). A slice's
        budget is what it picked, so the slices' budgets add up to the selection's picks."""
        picked = self.picked[index]
        return Selection(picked, self.candidates[index], torch.count_nonzero(picked))


def budget(ratio: float, n_valid: Tensor) -> Tensor:
    """max(floor(ratio * n_valid), 1) on the device (float64, like Python's int(ratio * n)).

    A ratio of exactly 0 switches the intervention off (budget 0); the reference rejects 0.
    """
    if ratio == 0:
        return torch.zeros((), dtype=torch.int64, device=n_valid.device)
    return torch.floor(n_valid.double() * ratio).clamp(min=1).long()


def static_budget(ratio: float, numel: int) -> int:
    """The budget at a full mask: a host-side bound on `budget`, sizing the topk."""
    return 0 if ratio == 0 or numel == 0 else min(numel, max(int(ratio * numel), 1))


@torch.no_grad()
def kl_cov_selection(
    batch: Batch, *, kl_cov_ratio: float, scope: Scope
) -> tuple[Selection, Centred]:
    """The K valid tokens of largest covariance, and the covariance they were chosen by."""
    c = centred(batch, scope)
    K = budget(kl_cov_ratio, c.n)
    valid = batch.valid.view(-1)  # N
    score = kl_cov_score(c.cov, batch)  # N
    if is_global(scope):
        k = static_budget(kl_cov_ratio, int(c.n.item()))  # the one host read of global scope
        picked = _global_top(score, valid, k, K, largest=True)
        return Selection(picked.view_as(batch.valid), batch.valid, K), c._replace(score=score)
    k = static_budget(kl_cov_ratio, score.numel())
    # One entry past the largest budget: the (K+1)-th score tells whether the top K is unique.
    top = top_k(score, min(k + 1, score.numel()))
    if score.device.type == "cpu" and kl_cov_ratio > 0 and not _unique_top(top[0], K):
        picked = _verl_kl_cov_top(batch, kl_cov_ratio)  # equal scores at the K-th: verl's choice
        selection = Selection(picked.view_as(batch.valid), batch.valid, K)
    else:
        first, count = _first_eligible(top[1][:k], valid, K)
        selection = Selection(first.view_as(batch.valid), batch.valid, K, count)
    return selection, c._replace(score=score, top=top)


def kl_cov_score(cov: Tensor, batch: Batch) -> Tensor:
    """KL-Cov's ranking score, N: the covariance, -inf at masked tokens and the lowest float at
    valid ones whose covariance is -inf, so that every valid token ranks above every masked
    one (verl ranks the valid tokens alone); NaN stays (ranked first, as `torch.topk` does)."""
    score = cov.reshape(-1).clamp_min(_LOWEST)  # N; clamp keeps NaN
    if batch.keep_bits is None:
        return score.masked_fill_(~batch.valid.view(-1), -torch.inf)
    # A bitwise OR with -inf's bits where masked (where the covariance is +0.0, all bits
    # clear): a plain integer pass, cheaper than masked_fill on CPU.
    inf_bits = batch.keep_bits.view(-1).bitwise_not().bitwise_and_(_NEG_INF_BITS)
    return score.view(torch.int32).bitwise_or_(inf_bits).view(torch.float32)


def _unique_top(values: Tensor, K: Tensor) -> bool:
    """Whether the K largest scores are one set whatever the order of equal ones: the K-th
    largest is above the (K+1)-th (NaN compares false: not unique). `values`: sorted
    descending, one past the largest budget. Reads one boolean: CPU only (no device there)."""
    if values.numel() == 0:
        return True
    at = torch.stack([K - 1, K]).clamp_(0, values.numel() - 1)
    kth, next_ = values.index_select(0, at).unbind()
    # Past the end (K equal to the number of tokens): nothing is left out, one set.
    return torch.is_nonzero((kth > next_) | (values.numel() <= K) | (K == 0))


def _verl_kl_cov_top(batch: Batch, kl_cov_ratio: float) -> Tensor:
    """verl's own selection, step by step (verl 0.9.1 `compute_policy_loss_kl_cov`): the valid
    tokens packed in row-major order, their covariance from the packed tokens' means, and
    `torch.topk` of the packed covariance, so that equal covariances resolve as verl's CPU
    `topk` resolves them. In float32 (client/covariance.py). Mask of the picked tokens, N."""
    valid = batch.valid.view(-1)
    at = torch.nonzero(valid).view(-1)  # positions of the valid tokens, row-major
    adv = batch.advantages.reshape(-1).index_select(0, at).to(COVARIANCE_DTYPE)
    lp = batch.log_prob.detach().reshape(-1).index_select(0, at).to(COVARIANCE_DTYPE)
    picked = torch.zeros_like(valid)
    n = at.numel()  # a shape: on CPU nothing to wait for
    if n == 0:
        return picked
    cov = (adv - adv.mean()) * (lp - lp.mean())
    K = max(1, int(n * kl_cov_ratio))
    return picked.index_fill_(0, at[torch.topk(cov, K, largest=True).indices], True)


@torch.no_grad()
def clip_cov_selection(
    batch: Batch,
    ppo_clipped: Tensor,
    *,
    clip_cov_ratio: float,
    clip_cov_lb: float,
    clip_cov_ub: float,
    generator: torch.Generator | None,
    scope: Scope,
) -> tuple[Selection, Centred]:
    """min(n, #candidates) random candidates, and the covariance they were chosen by."""
    c = centred(batch, scope)
    candidates = batch.valid & ~ppo_clipped & (c.cov > clip_cov_lb) & (c.cov < clip_cov_ub)
    N = budget(clip_cov_ratio, c.n)
    shape, device = batch.valid.shape, batch.valid.device
    count = None
    if is_global(scope):
        keys = _hash_keys(shape, generator, device)  # B, T
        keys = torch.where(candidates, keys, _KEY_NEVER).view(-1)
        k = static_budget(clip_cov_ratio, int(c.n.item()))  # the one host read of global scope
        picked = _global_top(keys, candidates.view(-1), k, N, largest=False)
    else:
        keys = _random_keys(candidates.numel(), generator, device)
        keys = torch.where(
            candidates.view(-1), keys.bitwise_or_(1), keys.new_full((), _NEVER), out=keys
        )
        idx = top_k(keys, static_budget(clip_cov_ratio, keys.numel()))[1]
        picked, count = _first_eligible(idx, candidates.view(-1), N)
    return Selection(picked.view_as(batch.valid), candidates, N, count), c


def _random_keys(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n uniformly random int32 values, from (n + 1) // 2 random 64-bit words."""
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    return words.random_(-(1 << 63), None, generator=generator).view(torch.int32)[:n]


def _first_eligible(idx: Tensor, eligible: Tensor, budget: Tensor) -> tuple[Tensor, Tensor]:
    """Mask of the eligible entries among the first `budget` of `idx` (best first; at most
    len(idx)), and their number (counted on those entries rather than on the mask)."""
    k = idx.numel()
    keep = (torch.arange(k, device=idx.device) < budget) & eligible.index_select(0, idx)
    return torch.zeros_like(eligible).index_put_((idx,), keep), torch.count_nonzero(keep)


def _global_top(
    score: Tensor, eligible: Tensor, k: int, budget: Tensor, *, largest: bool
) -> Tensor:
    """Mask of the eligible entries within the global `budget` best over all ranks (ties: all)."""
    if k == 0:
        return torch.zeros_like(eligible)
    worst = -torch.inf if largest else _KEY_NEVER
    local = torch.full((k,), worst, dtype=score.dtype, device=score.device)
    kk = min(k, score.numel())
    if kk:
        local[:kk] = torch.topk(score, kk, largest=largest, sorted=True).values
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    best = torch.topk(torch.cat(gathered), k, largest=largest, sorted=True).values  # k
    threshold = best[(budget - 1).clamp(min=0, max=k - 1)]
    inside = score >= threshold if largest else score <= threshold
    return inside & eligible & (budget > 0)


def _mix31(x: Tensor) -> Tensor:
    """An integer hash of 31-bit values (int64 arithmetic that never overflows)."""
    x = x ^ (x >> 16)
    x = (x * _HASH_MULT) & _M31
    x = x ^ (x >> 16)
    x = (x * _HASH_MULT) & _M31
    return x ^ (x >> 16)


def _hash_keys(
    shape: torch.Size, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """62-bit keys, a hash of (seed, global row, position): independent of the split of rows
    over ranks. The seed is drawn from rank 0's generator and broadcast."""
    B, T = shape  # rows, positions
    seeds = torch.randint(0, _M31, (2,), generator=generator, device=device)
    dist.broadcast(seeds, src=0)
    rows = torch.tensor([B], dtype=torch.int64, device=device)
    all_rows = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(all_rows, rows)
    offset = torch.stack(all_rows)[: dist.get_rank()].sum()
    row = (torch.arange(B, device=device) + offset).unsqueeze(1)  # B, 1 (global row)
    pos = torch.arange(T, device=device).unsqueeze(0)  # 1, T
    hi = _mix31((_mix31(row ^ seeds[0]) + pos) & _M31)  # B, T
    lo = _mix31((_mix31(row ^ seeds[1]) + pos * 3 + 1) & _M31)  # B, T
    return (hi << 31) | lo
