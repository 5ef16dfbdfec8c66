"""Step statistics, accumulated on the device over micro-batches and copied to the host once.

`StepAccumulator.add` is called once per micro-batch. It launches device work only: no
`.item()`, no boolean indexing, no `bincount` sizing on CUDA. Everything it keeps is device
tensors: one row of per-micro-batch moments, the two histograms' counts (added in place) and a
running top-k buffer of the highest-covariance tokens. `pack` concatenates everything into ONE
flat float64 tensor and starts its copy to the host (pinned memory and a CUDA event on CUDA);
`PackedStep.unpack`, run later on the reporter thread, waits for that event, combines the
micro-batch rows in plain Python and builds the wire format. One host transfer per step,
whatever the number of micro-batches and statistics, and no combination work on the training
thread.

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
from client.histograms import bucket_counts_unmasked, histogram_wire
from client.losses import LossStats
from client.selection import static_budget
from monitor.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count, bucket_index

TOP_FRACTION = 2e-4  # the paper's "top 0.02% of tokens"
DEFAULT_TOP_TOKENS = 16
MAX_TEXT_CHARS = 256  # the wire's limit on a top token's decoded text
_LOWEST = torch.finfo(torch.float32).min  # score of masked tokens: below every real covariance

# One row per micro-batch: counts (int64 on the device) then float32 values, both sent as
# float64. Means are per micro-batch; `unpack` weights them by tokens.
_COUNTS = ("tokens", "rows", "ent_tokens", "loss_tokens", "stat_tokens", "candidates",
           "detached", "penalised", "budget")  # fmt: skip
_VALUES = ("lp_mean", "adv_mean", "adv_m2", "cov_mean", "cov_m2", "cov_max", "ent_sum",
           "abs_lr_mean", "loss", "pen_abs_lr_mean", "clip_frac")  # fmt: skip
_ROW = _COUNTS + _VALUES
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
        self._numel = 0  # tokens seen, masked included (host-side, from the shapes)
        self._entropy_numel = 0  # the same, for micro-batches that gave an entropy
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
        self._numel += keep.numel()
        denom = c.n.clamp(min=1)
        zero_i = torch.zeros((), dtype=torch.int64, device=keep.device)
        zero_f = torch.zeros((), dtype=torch.float32, device=keep.device)

        # Moments around this micro-batch's means (merged exactly in `unpack`).
        adv_dev = (batch.advantages.view(-1).float() - c.adv_mean).mul_(keep)  # N
        cov = c.cov.view(-1)  # N, 0 at masked tokens
        cov_mean = cov.sum() / denom
        cov_dev = (cov - cov_mean).mul_(keep)  # N
        score = (keep - 1.0).mul_(-_LOWEST).add_(cov)  # N; masked tokens at the lowest float
        counts = dict.fromkeys(_COUNTS, zero_i)
        values = dict.fromkeys(_VALUES, zero_f)
        counts["tokens"] = c.n
        counts["rows"] = torch.count_nonzero(batch.keep.sum(dim=-1))
        values["lp_mean"] = c.lp_mean
        values["adv_mean"] = c.adv_mean
        values["adv_m2"] = adv_dev.dot(adv_dev)
        values["cov_mean"] = cov_mean
        values["cov_m2"] = cov_dev.dot(cov_dev)
        values["cov_max"] = score.amax()
        self._count("_cov_counts", cov, COVARIANCE_LAYOUT)

        if entropy is not None:
            ent = torch.where(batch.valid, entropy.detach().float(), 0.0).view(-1)  # N
            counts["ent_tokens"] = c.n
            self._entropy_numel += keep.numel()
            values["ent_sum"] = ent.sum()
            self._count("_entropy_counts", ent, ENTROPY_LAYOUT)
        if loss is not None:
            counts["loss_tokens"] = c.n
            values["loss"] = loss.detach().float()
        if loss_stats is not None:
            s = loss_stats
            self._loss_mode = s.loss_mode
            for name in ("candidates", "detached", "penalised", "budget"):
                counts[name] = getattr(s, name)
            counts["stat_tokens"] = s.tokens
            values["abs_lr_mean"] = s.abs_log_ratio_mean
            values["pen_abs_lr_mean"] = s.penalised_abs_log_ratio_mean
            values["clip_frac"] = s.ppo_clip_frac
        else:  # masked entries are 0 in both, so their difference is too
            abs_lr = (batch.log_prob.detach() - batch.old_log_prob).abs().sum()
            counts["stat_tokens"] = c.n
            values["abs_lr_mean"] = abs_lr.float() / denom
        row = torch.cat(
            [
                torch.stack([counts[k] for k in _COUNTS]).double(),
                torch.stack([values[k].float() for k in _VALUES]).double(),
            ]
        )
        self._rows.append(row)
        self._update_top(score, log_prob, advantages, entropy, token_ids)

    def _count(self, name: str, values: Tensor, layout: str) -> None:
        # Masked entries are exactly 0 here; `unpack` takes them out of the zero bucket.
        counts = bucket_counts_unmasked(values, layout)
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
        T = log_prob.shape[1]  # positions
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
        """Concatenate the step into one flat tensor, start its copy to the host, reset."""
        if not self._rows or self._cov_counts is None or self._top is None:
            self.reset()
            return PackedStep(None, _Layout(0, 0, False, None, self.top_fraction, 0, 0))
        parts = [torch.stack(self._rows).view(-1)]  # M * len(_ROW)
        if self._entropy_counts is not None:
            parts.append(self._entropy_counts.double())
        parts += [self._cov_counts.double(), self._top.reshape(-1)]
        flat = torch.cat(parts)
        layout = _Layout(
            micro_batches=len(self._rows),
            top_rows=self._top.shape[0],
            entropy=self._entropy_counts is not None,
            loss_mode=self._loss_mode,
            top_fraction=self.top_fraction,
            numel=self._numel,
            entropy_numel=self._entropy_numel,
            top_tokens=self.top_tokens,
        )
        self.reset()
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            return PackedStep(host, layout, event)
        return PackedStep(flat.to("cpu"), layout)


@dataclass(frozen=True)
class _Layout:
    """Static description of a packed step (what is where in the flat tensor)."""

    micro_batches: int
    top_rows: int  # rows of the top-token buffer
    entropy: bool  # whether the entropy histogram is there
    loss_mode: str | None  # None when no loss statistics were given
    top_fraction: float
    numel: int  # tokens passed in, masked included: masked ones sit in the zero buckets
    entropy_numel: int
    top_tokens: int = DEFAULT_TOP_TOKENS


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
        pos = L.micro_batches * len(_ROW)
        rows = [
            dict(zip(_ROW, values[i : i + len(_ROW)], strict=True))
            for i in range(0, pos, len(_ROW))
        ]
        histograms: dict[str, Any] = {}
        for name, layout, present, numel, valid in (
            ("entropy", ENTROPY_LAYOUT, L.entropy, L.entropy_numel, "ent_tokens"),
            ("covariance", COVARIANCE_LAYOUT, True, L.numel, "tokens"),
        ):
            if not present:
                continue
            size = bucket_count(layout) + 1
            counts = values[pos : pos + size]
            pos += size
            # Masked entries were counted as zeros: take them back out.
            counts[bucket_index(layout, 0.0)] -= numel - sum(r[valid] for r in rows)
            histograms[name] = histogram_wire(layout, counts)
        top = [values[i : i + len(_TOP)] for i in range(pos, len(values), len(_TOP))]
        stats, user = _combine(rows, [t[0] for t in top], L)
        return {
            "stats": stats,
            "histograms": histograms,
            "top_tokens": _top_tokens(top[: L.top_tokens], tokenizer),
            "user": user,
        }


def _combine(
    rows: list[dict[str, float]], top_cov: list[float], L: _Layout
) -> tuple[dict[str, float | int], dict[str, float]]:
    """The step's statistics from the micro-batch rows (host side, float64)."""
    N = sum(r["tokens"] for r in rows)
    stats: dict[str, float | int] = {"tokens": int(N)}
    if N == 0:
        return stats, {}

    def weighted(name: str, weight: str = "tokens") -> float:
        total = sum(r[weight] for r in rows)
        return sum(r[name] * r[weight] for r in rows if r[weight]) / total

    def pooled(mean: str, m2: str) -> tuple[float, float]:
        grand = weighted(mean)
        within = sum(r[m2] for r in rows)
        between = sum(r["tokens"] * (r[mean] - grand) ** 2 for r in rows if r["tokens"])
        return grand, math.sqrt((within + between) / N) if within + between >= 0 else math.nan

    stats["logp_mean"] = weighted("lp_mean")
    stats["adv_mean"], stats["adv_std"] = pooled("adv_mean", "adv_m2")
    stats["cov_mean"], stats["cov_std"] = pooled("cov_mean", "cov_m2")
    stats["cov_max"] = max((r["cov_max"] for r in rows if r["tokens"]), key=_nan_first)
    k = max(int(L.top_fraction * N), 1)  # the top 0.02% of the step's tokens, at least one
    top = top_cov[:k]
    stats["cov_top_concentration"] = _ratio(math.fsum(top) / len(top), stats["cov_mean"])
    stats["response_length"] = N / max(sum(r["rows"] for r in rows), 1.0)
    if any(r["ent_tokens"] for r in rows):
        ent_tokens = sum(r["ent_tokens"] for r in rows)
        stats["entropy"] = sum(r["ent_sum"] for r in rows) / ent_tokens
    if any(r["loss_tokens"] for r in rows):
        stats["policy_loss"] = weighted("loss", "loss_tokens")
    stats["abs_log_ratio_mean"] = weighted("abs_lr_mean", "stat_tokens")
    user: dict[str, float] = {}
    if L.loss_mode is not None:
        stats["ppo_clip_frac"] = weighted("clip_frac", "stat_tokens")
        if L.loss_mode == "clip_cov":
            stats["candidates"] = int(sum(r["candidates"] for r in rows))
            stats["detached"] = int(sum(r["detached"] for r in rows))
        if L.loss_mode == "kl_cov":
            penalised = sum(r["penalised"] for r in rows)
            stats["penalised"] = int(penalised)
            if penalised:
                stats["penalised_abs_log_ratio_mean"] = weighted("pen_abs_lr_mean", "penalised")
        if L.loss_mode in ("clip_cov", "kl_cov"):
            budget = sum(r["budget"] for r in rows)
            user["selection_effective_ratio"] = budget / sum(r["stat_tokens"] for r in rows)
    return stats, user


def _nan_first(x: float) -> float:
    return math.inf if math.isnan(x) else x  # max() must not skip a NaN: the run diverged


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


def _top_tokens(rows: list[list[float]], tokenizer: Tokenizer | None) -> list[dict[str, Any]]:
    tokens = []
    for cov, logp, adv, ent, token_id, position in rows:
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
