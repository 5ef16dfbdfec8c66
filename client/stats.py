"""Step statistics, accumulated on the device over micro-batches and copied to the host once.

`StepAccumulator.add` is called once per micro-batch. It launches device work only: no
`.item()`, no boolean indexing, no `bincount` sizing on CUDA. Everything it keeps is device
tensors: one row of per-micro-batch moments, the two histograms' counts (added in place) and a
running top-k buffer of the highest-covariance tokens. `pack` combines the rows, concatenates
everything into ONE flat float64 tensor and starts its copy to the host (pinned memory and a
CUDA event on CUDA); `PackedStep.unpack`, run later on the reporter thread, waits for that event
and turns the numbers into the wire format. One host transfer per step, whatever the number of
micro-batches and statistics.

How micro-batches combine into the step's statistics (all token-weighted):
- means (entropy, logp, advantage, covariance, |log-ratio|, loss, PPO clip fraction) weight each
  micro-batch by its valid tokens;
- standard deviations (advantage, covariance) are pooled: within-micro-batch plus
  between-micro-batch variance (Chan et al.), exact, not an average of deviations;
- counts (tokens, candidates, detached, penalised) add; cov_max is the max;
- covariance is computed per micro-batch around that micro-batch's means, the same selection
  unit the reference's Clip-Cov / KL-Cov use;
- cov_top_concentration is the mean covariance of the top 0.02% valid tokens of the step (at
  least one) divided by the step's mean covariance (the paper reports about 1800);
- histograms add counts on the fixed layouts of `monitor.layouts`; NaN goes to `nonfinite`.
Non-finite inputs are never dropped: a NaN log-prob or entropy makes the means NaN and shows in
the histograms' `nonfinite` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from client.batch import masked_batch
from client.covariance import centred
from client.histograms import bucket_counts_except, histogram_wire
from client.losses import LossStats
from client.selection import static_budget
from monitor.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count

TOP_FRACTION = 2e-4  # the paper's "top 0.02% of tokens"
DEFAULT_TOP_TOKENS = 16
MAX_TEXT_CHARS = 256  # the wire's limit on a top token's decoded text
_LOWEST = torch.finfo(torch.float32).min  # score of masked tokens: below every real covariance

# One row per micro-batch (float64). Sums and counts unless named *_mean / *_m2 / *_max.
_ROW = (
    "tokens", "rows", "lp_sum", "adv_mean", "adv_m2", "cov_mean", "cov_m2", "cov_max",
    "ent_sum", "ent_tokens", "abs_lr_sum", "loss_sum", "loss_tokens", "stat_tokens",
    "candidates", "detached", "penalised", "pen_abs_lr_sum", "clip_sum", "budget",
)  # fmt: skip
_COL = {name: i for i, name in enumerate(_ROW)}
# Columns of the top-token buffer.
_TOP = ("cov", "logp", "advantage", "entropy", "token_id", "position")


class Tokenizer(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class StepAccumulator:
    """Accumulates one step's statistics over micro-batches, on the device, without syncing.

    Token-weighted over micro-batches (see the module docstring). Call `add` per micro-batch,
    `pack` once at the end of the step (it resets the accumulator), and `unpack` on the result
    wherever waiting for the device is harmless.
    """

    def __init__(
        self, *, top_tokens: int = DEFAULT_TOP_TOKENS, top_fraction: float = TOP_FRACTION
    ) -> None:
        if not 0 <= top_tokens <= 64:
            raise ValueError(f"top_tokens must be in [0, 64], got {top_tokens}")
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.top_tokens = top_tokens
        self.top_fraction = top_fraction
        self.reset()

    def reset(self) -> None:
        self._rows: list[Tensor] = []
        self._entropy_counts: Tensor | None = None
        self._cov_counts: Tensor | None = None
        self._top: Tensor | None = None  # k, len(_TOP), sorted by cov descending
        self._numel = 0  # tokens seen, masked included: sizes the top buffer on the host
        self._loss_mode: str | None = None

    @torch.no_grad()
    def add(
        self,
        log_prob: Tensor,
        old_log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        *,
        entropy: Tensor | None = None,
        loss: Tensor | None = None,
        loss_stats: LossStats | None = None,
        token_ids: Tensor | None = None,
    ) -> None:
        """Accumulate one micro-batch ([batch, response_len] tensors, like the loss's).

        `loss_stats` must come from the loss on these same tensors: its masked inputs and, in
        "micro_batch" scope, its covariance are reused instead of computed again.
        """
        batch = loss_stats.batch if loss_stats is not None else None
        if batch is None:
            batch = masked_batch(log_prob, old_log_prob, advantages, response_mask)
        c = loss_stats.centred if loss_stats is not None else None
        if c is None or c.scope != "micro_batch":
            c = centred(batch, "micro_batch")  # statistics are per micro-batch
        keep = batch.keep.view(-1)  # N; 0/1 weights: float arithmetic instead of masking
        n = c.n.double()
        denom = n.clamp(min=1)

        # Moments around this micro-batch's means (merged exactly in `pack`).
        adv_dev = (batch.advantages.view(-1).float() - c.adv_mean).mul_(keep)  # N
        cov = c.cov.view(-1)  # N, 0 at masked tokens
        cov_mean = cov.sum().double() / denom
        cov_dev = (cov - cov_mean.float()).mul_(keep)  # N
        score = (keep - 1.0).mul_(-_LOWEST).add_(cov)  # N; masked tokens at the lowest float
        row: dict[str, Tensor] = {
            "tokens": n,
            "rows": torch.count_nonzero(batch.keep.sum(dim=-1)),
            "lp_sum": c.lp_mean.double() * n,
            "adv_mean": c.adv_mean,
            "adv_m2": adv_dev.dot(adv_dev),
            "cov_mean": cov_mean,
            "cov_m2": cov_dev.dot(cov_dev),
            "cov_max": torch.where(n > 0, score.amax(), -torch.inf),
        }
        masked = c.n.neg().add_(cov.numel())  # masked tokens
        self._count("_cov_counts", cov, COVARIANCE_LAYOUT, c.masked_value, masked)

        if entropy is not None:
            ent = torch.where(batch.valid, entropy.detach().float(), 0.0).view(-1)  # N
            row["ent_sum"] = ent.sum()
            row["ent_tokens"] = n
            self._count("_entropy_counts", ent, ENTROPY_LAYOUT, torch.zeros_like(cov_mean), masked)
        if loss is not None:
            row["loss_sum"] = loss.detach().double() * n
            row["loss_tokens"] = n
        if loss_stats is not None:
            s = loss_stats
            self._loss_mode = s.loss_mode
            row["abs_lr_sum"] = s.abs_log_ratio_mean.double() * s.tokens
            row["stat_tokens"] = s.tokens
            row["candidates"] = s.candidates
            row["detached"] = s.detached
            row["penalised"] = s.penalised
            row["pen_abs_lr_sum"] = s.penalised_abs_log_ratio_mean.double() * s.penalised
            row["clip_sum"] = s.ppo_clip_frac.double() * s.tokens
            row["budget"] = s.budget
        else:  # masked entries are 0 in both, so their difference is too
            row["abs_lr_sum"] = (batch.log_prob.detach() - batch.old_log_prob).abs().sum()
        self._rows.append(_stack_row(row, score.device))
        self._update_top(score, log_prob, advantages, entropy, token_ids)

    def _count(
        self, name: str, values: Tensor, layout: str, masked_value: Tensor, masked: Tensor
    ) -> None:
        counts = bucket_counts_except(values, layout, masked_value, masked)
        total = getattr(self, name)
        setattr(self, name, counts if total is None else total.add_(counts))

    def _update_top(
        self,
        score: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        entropy: Tensor | None,
        token_ids: Tensor | None,
    ) -> None:
        """Keep the highest-covariance tokens seen so far: enough for the top-fraction
        statistic over every token seen (a bound known on the host) and for the top tokens."""
        B, T = log_prob.shape  # rows, positions
        self._numel += B * T
        k = max(self.top_tokens, static_budget(self.top_fraction, self._numel), 1)
        idx = torch.topk(score, min(k, score.numel()), sorted=False).indices  # k'
        nan = torch.full_like(score[idx], math.nan)
        columns = [
            score[idx],
            log_prob.detach().reshape(-1)[idx].float(),
            advantages.detach().reshape(-1)[idx].float(),
            nan if entropy is None else entropy.detach().reshape(-1)[idx].float(),
            nan if token_ids is None else token_ids.reshape(-1)[idx].float(),
            (idx % T).float(),
        ]
        top = torch.stack(columns, dim=1).double()  # k', len(_TOP)
        if self._top is not None:
            top = torch.cat([self._top, top])
        order = torch.topk(top[:, 0], min(k, top.shape[0]), sorted=True).indices
        self._top = top[order]

    @torch.no_grad()
    def pack(self) -> PackedStep:
        """Combine the micro-batches into one flat tensor, start its copy to the host, reset."""
        if not self._rows:
            self.reset()
            return PackedStep(None, _Layout(top_rows=0, entropy=False, loss_mode=None))
        rows = torch.stack(self._rows)  # M, len(_ROW)
        device = rows.device
        parts = [_combine(rows, self._top, self.top_fraction)]
        has_entropy = self._entropy_counts is not None
        if self._entropy_counts is not None:
            parts.append(self._entropy_counts.double())
        assert self._cov_counts is not None and self._top is not None  # set with every row
        parts += [self._cov_counts.double(), self._top[: self.top_tokens].reshape(-1)]
        flat = torch.cat(parts)
        layout = _Layout(
            top_rows=min(self.top_tokens, self._top.shape[0]),
            entropy=has_entropy,
            loss_mode=self._loss_mode,
        )
        self.reset()
        if device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            return PackedStep(host, layout, event)
        return PackedStep(flat.to("cpu"), layout)


# Statistics `_combine` writes, in order, before the histograms and the top-token buffer.
_OUT = (
    "tokens", "rows", "logp_mean", "adv_mean", "adv_std", "cov_mean", "cov_std", "cov_max",
    "cov_top_concentration", "entropy", "ent_tokens", "abs_log_ratio_mean", "policy_loss",
    "loss_tokens", "candidates", "detached", "penalised", "penalised_abs_log_ratio_mean",
    "ppo_clip_frac", "budget", "stat_tokens",
)  # fmt: skip


def _stack_row(row: dict[str, Tensor], device: torch.device) -> Tensor:
    zero = torch.zeros((), dtype=torch.float64, device=device)  # a fill, not a host copy
    return torch.stack([row[name].to(torch.float64) if name in row else zero for name in _ROW])


def _combine(rows: Tensor, top: Tensor | None, top_fraction: float) -> Tensor:
    """The step's statistics from the micro-batch rows, on the device."""
    col = {name: rows[:, i] for i, name in enumerate(_ROW)}
    n = col["tokens"]  # M
    N = n.sum()
    denom = N.clamp(min=1)

    def pooled(mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
        grand = (n * mean).sum() / denom
        total_m2 = m2.sum() + (n * (mean - grand) ** 2).sum()
        return grand, (total_m2 / denom).sqrt()

    adv_mean, adv_std = pooled(col["adv_mean"], col["adv_m2"])
    cov_mean, cov_std = pooled(col["cov_mean"], col["cov_m2"])
    if top is None:
        top_mean = torch.full_like(N, math.nan)
    else:
        k = torch.floor(N * top_fraction).clamp(min=1)  # the top 0.02%, at least one token
        first = torch.arange(top.shape[0], device=N.device) < k
        top_mean = torch.where(first, top[:, 0], 0.0).sum() / k
    ent_tokens = col["ent_tokens"].sum()
    loss_tokens = col["loss_tokens"].sum()
    stat_tokens = col["stat_tokens"].sum()
    out = {
        "tokens": N,
        "rows": col["rows"].sum(),
        "logp_mean": col["lp_sum"].sum() / denom,
        "adv_mean": adv_mean,
        "adv_std": adv_std,
        "cov_mean": cov_mean,
        "cov_std": cov_std,
        "cov_max": col["cov_max"].amax(),
        "cov_top_concentration": top_mean / cov_mean,
        "entropy": col["ent_sum"].sum() / ent_tokens.clamp(min=1),
        "ent_tokens": ent_tokens,
        "abs_log_ratio_mean": col["abs_lr_sum"].sum() / denom,
        "policy_loss": col["loss_sum"].sum() / loss_tokens.clamp(min=1),
        "loss_tokens": loss_tokens,
        "candidates": col["candidates"].sum(),
        "detached": col["detached"].sum(),
        "penalised": col["penalised"].sum(),
        "penalised_abs_log_ratio_mean": col["pen_abs_lr_sum"].sum()
        / col["penalised"].sum().clamp(min=1),
        "ppo_clip_frac": col["clip_sum"].sum() / stat_tokens.clamp(min=1),
        "budget": col["budget"].sum(),
        "stat_tokens": stat_tokens,
    }
    return torch.stack([out[name] for name in _OUT])


@dataclass(frozen=True)
class _Layout:
    """Static description of a packed step (what is in the flat tensor)."""

    top_rows: int  # rows of the top-token buffer
    entropy: bool  # whether the entropy histogram is there
    loss_mode: str | None  # None when no loss statistics were given


class PackedStep:
    """One step's statistics in one flat tensor on its way to the host."""

    def __init__(
        self, host: Tensor | None, layout: _Layout, event: torch.cuda.Event | None = None
    ) -> None:
        self._host = host
        self._layout = layout
        self._event = event

    def ready(self) -> bool:
        """Whether the copy to the host has finished (unpack would not wait)."""
        return self._event is None or bool(self._event.query())  # type: ignore[no-untyped-call]

    def unpack(self, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
        """The wire form: {"stats", "histograms", "top_tokens", "user"}.

        Waits for the copy to the host. Stats use the names of `client.report.REPORT_STATS`;
        "user" holds the effective selection ratio (budget over tokens), which has no wire stat.
        Statistics that are undefined for the step (no valid token, no entropy given, no loss)
        are left out rather than sent as zeros.
        """
        if self._host is None:
            return {"stats": {}, "histograms": {}, "top_tokens": [], "user": {}}
        if self._event is not None:
            self._event.synchronize()
        values = self._host.tolist()
        L = self._layout
        out = dict(zip(_OUT, values[: len(_OUT)], strict=True))
        pos = len(_OUT)
        histograms: dict[str, Any] = {}
        if L.entropy:
            size = bucket_count(ENTROPY_LAYOUT) + 1
            histograms["entropy"] = histogram_wire(ENTROPY_LAYOUT, values[pos : pos + size])
            pos += size
        size = bucket_count(COVARIANCE_LAYOUT) + 1
        histograms["covariance"] = histogram_wire(COVARIANCE_LAYOUT, values[pos : pos + size])
        pos += size
        top = values[pos : pos + L.top_rows * len(_TOP)]
        return {
            "stats": _stats(out, L),
            "histograms": histograms,
            "top_tokens": _top_tokens(top, tokenizer),
            "user": _user(out, L),
        }


def _stats(out: dict[str, float], L: _Layout) -> dict[str, float | int]:
    tokens = int(out["tokens"])
    stats: dict[str, float | int] = {"tokens": tokens}
    if tokens == 0:
        return stats
    for name in ("logp_mean", "adv_mean", "adv_std", "cov_mean", "cov_std", "cov_max"):
        stats[name] = out[name]
    stats["cov_top_concentration"] = out["cov_top_concentration"]
    stats["abs_log_ratio_mean"] = out["abs_log_ratio_mean"]
    stats["response_length"] = out["tokens"] / max(out["rows"], 1.0)
    if out["ent_tokens"] > 0:
        stats["entropy"] = out["entropy"]
    if out["loss_tokens"] > 0:
        stats["policy_loss"] = out["policy_loss"]
    if L.loss_mode is not None and out["stat_tokens"] > 0:
        stats["ppo_clip_frac"] = out["ppo_clip_frac"]
        if L.loss_mode == "clip_cov":
            stats["candidates"] = int(out["candidates"])
            stats["detached"] = int(out["detached"])
        if L.loss_mode == "kl_cov":
            stats["penalised"] = int(out["penalised"])
            if out["penalised"] > 0:
                stats["penalised_abs_log_ratio_mean"] = out["penalised_abs_log_ratio_mean"]
    return stats


def _user(out: dict[str, float], L: _Layout) -> dict[str, float]:
    if L.loss_mode in ("clip_cov", "kl_cov") and out["stat_tokens"] > 0:
        return {"selection_effective_ratio": out["budget"] / out["stat_tokens"]}
    return {}


def _top_tokens(flat: list[float], tokenizer: Tokenizer | None) -> list[dict[str, Any]]:
    tokens = []
    for i in range(0, len(flat), len(_TOP)):
        cov, logp, adv, ent, token_id, position = flat[i : i + len(_TOP)]
        if not math.isfinite(cov) or cov <= _LOWEST:  # masked padding, or non-finite
            continue
        token: dict[str, Any] = {"cov": cov, "logp": logp, "advantage": adv}
        token["entropy"] = ent if math.isfinite(ent) else None
        token["position"] = int(position)
        if math.isfinite(token_id):
            token["token_id"] = int(token_id)
            if tokenizer is not None:
                token["text"] = _decode(tokenizer, int(token_id))
        tokens.append(token)
    return tokens


def _decode(tokenizer: Tokenizer, token_id: int) -> str | None:
    try:
        return tokenizer.decode([token_id])[:MAX_TEXT_CHARS]
    except Exception:  # a tokenizer that cannot decode one id must not lose the report
        return None
