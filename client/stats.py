"""Step statistics, accumulated on the device over micro-batches and copied to the host once.

`StepAccumulator.add` is called once per micro-batch. It launches device work only: no
`.item()`, no boolean indexing, no `bincount` sizing on CUDA. Everything it keeps is device
tensors: one row of per-micro-batch moments and sums, the histograms' counts (entropy x covariance
jointly, added in place) and a running top-k buffer of the highest-covariance tokens; its
temporaries go to `WorkBuffers` kept from one call to the next. `pack` concatenates
everything into ONE flat float64 tensor and starts its copy to the host (pinned memory and a
CUDA event on CUDA); `PackedStep.unpack`, run later on the reporter thread, waits for that
event, combines the micro-batch rows in plain Python and builds the wire format. One host
transfer per step, whatever the number of micro-batches and statistics, and no combination work
on the training thread.

How micro-batches combine into the step's statistics (all token-weighted):
- means (entropy, logp, advantage, covariance, |log-ratio|, loss, PPO clip fraction) weight each
  micro-batch by its valid tokens;
- the advantage's standard deviation is pooled: within-micro-batch plus between-micro-batch
  variance (Chan et al.), exact, not an average of deviations; the covariance's comes from the
  step's sums of cov and cov^2 (float32 on the device, combined in float64), which spares a
  centring pass; the difference loses a factor RMS^2 / variance of the sums' precision, about
  1 in practice, where the covariance's mean is far below its spread;
- counts (tokens, candidates, detached, penalised) add; cov_max is the max (NaN if any);
- covariance is computed per micro-batch around that micro-batch's means, the same selection
  unit the reference's Clip-Cov / KL-Cov use;
- cov_top_concentration is the mean covariance of the top 0.02% valid tokens of the step (at
  least one) divided by the step's mean covariance (the paper reports about 1800); left out when
  the step has no covariance at all (every advantage equal, as when all of GRPO's groups score
  alike): 0 / 0 is no divergence and must not raise the non-finite alarm;
- histograms add counts on the fixed layouts of `entmon.wire.layouts`; NaN goes to `nonfinite`;
- GRPO group health (sequences: rows of the mask with a valid token): one table per step adds,
  per response-length bucket (length-v1), the sequences, those whose valid tokens all have zero
  advantage (|A| <= ZERO_ADVANTAGE), their zero-advantage tokens and, with an entropy, the tokens
  and entropy sum of the sequences whose entropy sum is finite (the others are counted apart).
  Its row sums give the zero-advantage shares, its columns the response-length histogram and
  `entropy_by_length`: all exact to merge.
Non-finite inputs are never dropped: a NaN log-prob or entropy makes the means NaN and shows in
the histograms' `nonfinite` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from client.batch import Batch, masked_batch, zero_masked
from client.covariance import Centred, centred
from client.histograms import (
    bucket_counts_joint,
    bucket_counts_unmasked,
    histogram_wire,
    length_buckets,
)
from client.losses import LossStats
from client.selection import static_budget
from client.topk import top_k
from entmon.wire.layouts import (
    COVARIANCE_LAYOUT,
    ENTROPY_LAYOUT,
    LENGTH_LAYOUT,
    bucket_count,
    bucket_index,
)
from entmon.wire.stats import ZERO_ADVANTAGE, pooled_std, weighted_mean

TOP_FRACTION = 2e-4  # the paper's "top 0.02% of tokens"
DEFAULT_TOP_TOKENS = 16
MAX_TEXT_CHARS = 256  # the wire's limit on a top token's decoded text
_LOWEST = torch.finfo(torch.float32).min  # score of masked tokens: below every real covariance

# Per micro-batch: counts (int64 on the device) and float32 values, packed as float64, all
# micro-batches' counts first. Means are per micro-batch; `unpack` weights them by tokens.
_COUNTS = ("tokens", "rows", "ent_tokens", "loss_tokens", "stat_tokens", "candidates",
           "detached", "penalised", "budget")  # fmt: skip
_VALUES = ("lp_mean", "adv_mean", "adv_m2", "cov_sum", "cov_sq", "ent_sum", "abs_lr_mean",
           "loss", "pen_abs_lr_mean", "clip_frac")  # fmt: skip
# Rows of the group-health table (float64, one column per length-v1 bucket). Rows without a
# valid token land in bucket 0 as all-zero sequences: `unpack` takes them back out.
_GROUPS = ("sequences", "zero_adv_sequences", "zero_adv_tokens", "ent_tokens", "ent_sum",
           "ent_nonfinite")  # fmt: skip
# Columns of the top-token buffer.
CONTEXT_TOKENS = 4  # tokens kept on each side of a top token, decoded as its context
_CONTEXT = tuple(f"context_{i}" for i in range(2 * CONTEXT_TOKENS))
_TOP = ("cov", "logp", "advantage", "entropy", "token_id", "position", *_CONTEXT)


class Tokenizer(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


class WorkBuffers:
    """Float32 work buffers for `StepAccumulator.add`, kept from one call to the next.

    On CPU a fresh buffer of a million tokens costs about as much in page faults as the pass
    that fills it, so `add` writes its temporaries into these (8 buffers of the micro-batch's
    size: 32 MiB at a million tokens). Each slot holds one temporary of `add` at a time and
    nothing kept beyond `add` points into them, so one `WorkBuffers` can serve a fresh
    accumulator per step (the `Monitor` does), as long as one thread uses it at a time. Other
    devices get fresh buffers (CUDA's caching allocator already reuses memory).
    """

    def __init__(self) -> None:
        self._buffers: dict[int, Tensor] = {}
        self._views: dict[tuple[int, int], Tensor] = {}  # (slot, numel) -> its first numel

    def get(self, slot: int, numel: int, device: torch.device) -> Tensor:
        """Slot `slot`'s buffer as a 1-D float32 tensor of `numel` entries on `device`."""
        if device.type != "cpu":
            return torch.empty(numel, dtype=torch.float32, device=device)
        view = self._views.get((slot, numel))
        if view is None:
            buffer = self._buffers.get(slot)
            if buffer is None or buffer.numel() < numel:
                buffer = self._buffers[slot] = torch.empty(numel, dtype=torch.float32)
                self._views = {key: v for key, v in self._views.items() if key[0] != slot}
            if len(self._views) > 64:  # many micro-batch sizes: forget the old views
                self._views.clear()
            view = self._views[slot, numel] = buffer[:numel]
        return view


class StepAccumulator:
    """Accumulates one step's statistics over micro-batches, on the device, without syncing.

    Token-weighted over micro-batches (see the module docstring). Call `add` per micro-batch,
    `pack` once at the end of the step (it resets the accumulator), and `unpack` on the result
    wherever waiting for the device is harmless.
    """

    def __init__(
        self,
        *,
        top_tokens: int = DEFAULT_TOP_TOKENS,
        top_fraction: float = TOP_FRACTION,
        work: WorkBuffers | None = None,
    ) -> None:
        if not 0 <= top_tokens <= 64:
            raise ValueError(f"top_tokens must be in [0, 64], got {top_tokens}")
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.top_tokens = top_tokens
        self.top_fraction = top_fraction
        self._work = WorkBuffers() if work is None else work
        self._device = torch.device("cpu")  # of the last micro-batch
        self._zero_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.reset()

    def reset(self) -> None:
        self._count_rows: list[Tensor] = []  # per micro-batch: the len(_COUNTS) counts, int64
        self._value_rows: list[Tensor] = []  # per micro-batch: the len(_VALUES) values, fp32
        # Histogram counts (int64): entropy x covariance jointly for the micro-batches that
        # gave an entropy, covariance alone for the others.
        self._joint: Tensor | None = None
        self._cov_counts: Tensor | None = None
        self._top: Tensor | None = None  # k, len(_TOP), sorted by cov descending
        self._groups: Tensor | None = None  # len(_GROUPS) x length-v1 buckets, float64
        self._rows = 0  # rows seen, without valid tokens included (host-side, from the shapes)
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
        "micro_batch" scope, its covariance (and KL-Cov's ranking) are reused instead of
        computed again.
        """
        batch = loss_stats.batch if loss_stats is not None else None
        if batch is None:
            batch = masked_batch(log_prob, old_log_prob, advantages, response_mask)
        keep = batch.keep.view(-1)  # N; 0/1 weights: float arithmetic instead of masking
        N = keep.numel()  # tokens, masked included
        self._device = keep.device
        c = loss_stats.centred if loss_stats is not None else None
        if c is None or c.scope != "micro_batch":  # statistics are per micro-batch
            c = centred(batch, "micro_batch", out=(self._scratch(5, N), self._scratch(6, N)))
        self._numel += N
        zero_i, zero_f = self._zeros(keep.device)

        # The advantages' moments around this micro-batch's mean; the covariance's raw sums
        # (its mean is small next to its spread, so the float64 difference in `unpack` keeps
        # the variance; one pass fewer than centring it here).
        adv_dev = c.adv_dev
        if adv_dev is None:
            adv_dev = (batch.advantages.float() - c.adv_mean).mul_(batch.keep)
        adv_dev = adv_dev.view(-1)  # N, 0 at masked tokens
        cov = c.cov.view(-1)  # N, 0 at masked tokens
        counts = dict.fromkeys(_COUNTS, zero_i)
        values = dict.fromkeys(_VALUES, zero_f)
        counts["tokens"] = c.n
        lengths = batch.keep.sum(dim=-1)  # B: valid tokens per row (exact in float32)
        counts["rows"] = torch.count_nonzero(lengths)
        values["lp_mean"] = c.lp_mean
        values["adv_mean"] = c.adv_mean
        values["adv_m2"] = adv_dev.dot(adv_dev)
        values["cov_sum"] = cov.sum()
        values["cov_sq"] = cov.dot(cov)

        # The histograms: masked entries are exactly 0 in both; `unpack` takes them out of
        # the zero buckets. With an entropy, one counting pass over their joint buckets.
        scratch = [self._scratch(i, N) for i in (2, 3, 4, 7)]
        entropy_rows = None
        if entropy is not None:
            ent = zero_masked(entropy.detach().float(), batch, out=self._scratch(0, N))
            ent = ent.view(-1)  # N
            counts["ent_tokens"] = c.n
            self._entropy_numel += N
            values["ent_sum"] = ent.sum()
            entropy_rows = ent.view(batch.keep.shape).sum(dim=-1)  # B (no -1: B or T may be 0)
            joint = bucket_counts_joint(
                ent, ENTROPY_LAYOUT, cov, COVARIANCE_LAYOUT, scratch=scratch
            )
            self._joint = joint if self._joint is None else self._joint.add_(joint)
        else:
            hist = bucket_counts_unmasked(cov, COVARIANCE_LAYOUT, scratch=scratch[1:])
            self._cov_counts = hist if self._cov_counts is None else self._cov_counts.add_(hist)

        if loss is not None:
            counts["loss_tokens"] = c.n
            values["loss"] = loss.detach().float()
        if loss_stats is not None:
            s = loss_stats
            self._loss_mode = s.loss_mode
            for name in ("candidates", "detached", "penalised", "budget"):
                counts[name] = getattr(s, name)
            counts["stat_tokens"] = s.tokens
            values["abs_lr_mean"] = s.abs_log_ratio_mean.float()
            values["pen_abs_lr_mean"] = s.penalised_abs_log_ratio_mean.float()
            values["clip_frac"] = s.ppo_clip_frac.float()
        else:  # masked entries are 0 in both, so their difference is too
            abs_lr = (batch.log_prob.detach() - batch.old_log_prob).abs().sum()
            counts["stat_tokens"] = c.n
            values["abs_lr_mean"] = abs_lr.float() / c.n.clamp(min=1)
        self._add_groups(batch, lengths, entropy_rows)
        self._update_top(batch, c, entropy, token_ids)
        self._count_rows.append(torch.stack([counts[k] for k in _COUNTS]))
        self._value_rows.append(torch.stack([values[k] for k in _VALUES]))  # float32

    def _add_groups(self, batch: Batch, lengths: Tensor, entropy_rows: Tensor | None) -> None:
        """Add each row to the group-health table at its length bucket (`lengths`: valid tokens
        per row; `entropy_rows`: each row's entropy sum, masked tokens 0). Masked advantages
        are exactly 0, so a row is all zero where all its positions are; NaN is not zero. A
        dozen operations on the micro-batch or its B rows: no per-statistic pass."""
        adv = batch.advantages.reshape(-1)
        T = batch.keep.shape[1]
        buffer = self._scratch(2, adv.numel()) if adv.dtype == torch.float32 else None
        zero = torch.abs(adv, out=buffer) if buffer is not None else adv.float().abs_()
        per_row = zero.le_(ZERO_ADVANTAGE).view(batch.keep.shape).sum(dim=-1)  # B: zero positions
        all_zero = (per_row == T).float()
        zero_tokens = per_row.add_(lengths).sub_(T)  # its valid ones
        parts = [torch.ones_like(lengths), all_zero, zero_tokens]  # float32: exact integers
        if entropy_rows is not None:
            finite = torch.isfinite(entropy_rows).float()
            sums = torch.where(finite > 0, entropy_rows, 0.0)
            parts += [lengths * finite, sums, 1.0 - finite]
        if self._groups is None:
            shape = (len(_GROUPS), bucket_count(LENGTH_LAYOUT))
            self._groups = torch.zeros(shape, dtype=torch.float64, device=lengths.device)
        source = torch.stack(parts).double()
        self._groups[: len(parts)].index_add_(1, length_buckets(lengths), source)
        self._rows += lengths.numel()

    def _zeros(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """0-d int64 and float32 zeros on `device`, made once (never written to)."""
        zeros = self._zero_cache.get(device)
        if zeros is None:
            zeros = self._zero_cache[device] = (
                torch.zeros((), dtype=torch.int64, device=device),
                torch.zeros((), dtype=torch.float32, device=device),
            )
        return zeros

    def _scratch(self, slot: int, numel: int) -> Tensor:
        # Slots: 0 entropy; 1 score; 2-4, 7 histogram work; 5, 6 centring.
        return self._work.get(slot, numel, self._device)

    def _update_top(
        self, batch: Batch, c: Centred, entropy: Tensor | None, token_ids: Tensor | None
    ) -> None:
        """Keep the highest-covariance tokens seen so far: enough for the top-fraction
        statistic over every token seen (a bound known on the host) and for the top tokens.
        The first of them is also the step's largest covariance."""
        T = batch.keep.shape[1]  # positions
        N = batch.keep.numel()
        k = min(max(self.top_tokens, static_budget(self.top_fraction, self._numel), 1), N)
        if c.top is not None and c.top[0].numel() >= k:  # KL-Cov's ranking went further
            best, idx = c.top[0][:k], c.top[1][:k]
        else:
            score = c.score
            if score is None:  # masked tokens at the lowest float: never above a real one
                keep = batch.keep.view(-1)
                score = torch.sub(keep, 1.0, out=self._scratch(1, N)).mul_(-_LOWEST)
                score = score.add_(c.cov.view(-1))
            best, idx = top_k(score, k)

        # The columns of _TOP: floats gathered at the tokens (NaN for what was not given),
        # then the token ids and positions, integers.
        def at_top(t: Tensor | None) -> Tensor:
            if t is None:
                return best.new_full(best.shape, math.nan)
            return t.reshape(-1).index_select(0, idx)

        floats = [best, at_top(batch.log_prob), at_top(batch.advantages), at_top(entropy)]
        ints = [idx % T]
        if token_ids is None:
            floats.append(at_top(None))
            context = best.new_full((best.numel(), 2 * CONTEXT_TOKENS), math.nan)
        else:
            ints.insert(0, at_top(token_ids))
            context = _context_ids(token_ids, batch.keep, idx, T)
        top = torch.cat(
            [torch.stack(floats, 1).double(), torch.stack(ints, 1).double(), context.double()], 1
        )
        if self._top is not None:  # merge with the earlier micro-batches' (sorted) tokens
            top = torch.cat([self._top, top])
            order = top_k(top[:, 0], min(k, top.shape[0]))[1]
            top = top.index_select(0, order)
        self._top = top

    @torch.no_grad()
    def pack(self) -> PackedStep:
        """Concatenate the step into one flat tensor, start its copy to the host, reset."""
        if not self._count_rows or self._top is None:
            self.reset()
            return PackedStep(None, _Layout(0, False, False, None, self.top_fraction, 0, 0, 0))
        M = len(self._count_rows)  # micro-batches
        counts, values = self._count_rows, self._value_rows
        parts = [
            (counts[0] if M == 1 else torch.stack(counts)).double().view(-1),  # M x _COUNTS
            (values[0] if M == 1 else torch.stack(values)).double().view(-1),  # M x _VALUES
        ]
        # The histograms go whole (a few thousand counts): `unpack` sums the joint ones.
        for hist in (self._joint, self._cov_counts, self._groups):
            if hist is not None:
                parts.append(hist.view(-1).double())
        flat = torch.cat([*parts, self._top.view(-1)])
        layout = _Layout(
            micro_batches=M,
            entropy=self._joint is not None,
            cov_only=self._cov_counts is not None,
            loss_mode=self._loss_mode,
            top_fraction=self.top_fraction,
            numel=self._numel,
            entropy_numel=self._entropy_numel,
            rows=self._rows,
            top_tokens=self.top_tokens,
        )
        self.reset()
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(torch.cuda.current_stream(flat.device))  # the copy's, on any device
            return PackedStep(host, layout, event)
        return PackedStep(flat.to("cpu"), layout)


@dataclass(frozen=True)
class _Layout:
    """Static description of a packed step (what is where in the flat tensor)."""

    micro_batches: int
    entropy: bool  # whether the joint entropy x covariance counts are there
    cov_only: bool  # whether covariance counts of micro-batches without entropy are there
    loss_mode: str | None  # None when no loss statistics were given
    top_fraction: float
    numel: int  # tokens passed in, masked included: masked ones sit in the zero buckets
    entropy_numel: int
    rows: int  # rows passed in, those without a valid token included
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

        Waits for the copy to the host. Stats use the names of `entmon.wire.stats.STATS`;
        "user" holds the effective selection ratio (budget over tokens), which has no wire stat.
        Statistics that are undefined for the step (no valid token, no entropy given, no loss)
        are left out rather than sent as zeros.
        """
        if self._host is None:
            return {"stats": {}, "histograms": {}, "top_tokens": [], "user": {}}
        if self._event is not None:
            self._event.synchronize()
        host, L = self._host, self._layout
        M = L.micro_batches
        pos = M * (len(_COUNTS) + len(_VALUES))
        counts, values = host[: M * len(_COUNTS)].tolist(), host[M * len(_COUNTS) : pos].tolist()
        rows = [
            dict(zip(_COUNTS, counts[i * len(_COUNTS) : (i + 1) * len(_COUNTS)], strict=True))
            | dict(zip(_VALUES, values[i * len(_VALUES) : (i + 1) * len(_VALUES)], strict=True))
            for i in range(M)
        ]
        by_cov = torch.zeros(bucket_count(COVARIANCE_LAYOUT) + 1, dtype=host.dtype)
        by_entropy = None
        if L.entropy:
            size = (bucket_count(ENTROPY_LAYOUT) + 1) * by_cov.numel()
            joint = host[pos : pos + size].view(-1, by_cov.numel())
            pos += size
            by_entropy, by_cov = joint.sum(dim=1), joint.sum(dim=0)
        if L.cov_only:
            by_cov += host[pos : pos + by_cov.numel()]
            pos += by_cov.numel()
        K = bucket_count(LENGTH_LAYOUT)
        table = host[pos : pos + len(_GROUPS) * K].view(len(_GROUPS), K).tolist()
        groups = dict(zip(_GROUPS, table, strict=True))
        pos += len(_GROUPS) * K
        empty = L.rows - sum(r["rows"] for r in rows)  # rows without a valid token: bucket 0
        groups["sequences"][0] -= empty
        groups["zero_adv_sequences"][0] -= empty
        histograms: dict[str, Any] = {}
        for name, layout, hist, numel, valid in (
            ("entropy", ENTROPY_LAYOUT, by_entropy, L.entropy_numel, "ent_tokens"),
            ("covariance", COVARIANCE_LAYOUT, by_cov, L.numel, "tokens"),
        ):
            if hist is None:
                continue
            bucket_counts = hist.tolist()
            # Masked entries were counted as zeros: take them back out.
            bucket_counts[bucket_index(layout, 0.0)] -= numel - sum(r[valid] for r in rows)
            histograms[name] = histogram_wire(layout, bucket_counts)
        if any(groups["sequences"]):
            lengths = [*groups["sequences"], 0]  # a length is never NaN
            histograms["response_length"] = histogram_wire(LENGTH_LAYOUT, lengths)
        if L.entropy and (any(groups["ent_tokens"]) or any(groups["ent_nonfinite"])):
            counts = [*groups["ent_tokens"], sum(groups["ent_nonfinite"])]
            histograms["entropy_by_length"] = histogram_wire(LENGTH_LAYOUT, counts) | {
                "sums": groups["ent_sum"]
            }
        top_values = host[pos:].tolist()
        top = [top_values[i : i + len(_TOP)] for i in range(0, len(top_values), len(_TOP))]
        stats, user = _combine(rows, [t[0] for t in top], L, groups)
        return {
            "stats": stats,
            "histograms": histograms,
            "top_tokens": _top_tokens(top[: L.top_tokens], tokenizer),
            "user": user,
        }


def _combine(
    rows: list[dict[str, float]], top_cov: list[float], L: _Layout, groups: dict[str, list[float]]
) -> tuple[dict[str, float | int], dict[str, float]]:
    """The step's statistics from the micro-batch rows (host side, float64)."""
    N = sum(r["tokens"] for r in rows)
    stats: dict[str, float | int] = {"tokens": int(N)}
    if N == 0:
        return stats, {}

    def weighted(name: str, weight: str = "tokens") -> float:
        return weighted_mean((r[name], r[weight]) for r in rows)

    def pooled(mean: str, m2: str) -> tuple[float, float]:
        return pooled_std((r[mean], r[m2] / r["tokens"], r["tokens"]) for r in rows if r["tokens"])

    stats["logp_mean"] = weighted("lp_mean")
    stats["adv_mean"], stats["adv_std"] = pooled("adv_mean", "adv_m2")
    cov_sum = sum(r["cov_sum"] for r in rows)
    stats["cov_mean"] = cov_sum / N
    cov_var = (sum(r["cov_sq"] for r in rows) - cov_sum * stats["cov_mean"]) / N
    stats["cov_std"] = math.sqrt(max(cov_var, 0.0))  # rounding may leave -0.x; NaN stays
    stats["cov_max"] = top_cov[0]  # NaN when there is one: topk ranks it first
    k = max(int(L.top_fraction * N), 1)  # the top 0.02% of the step's tokens, at least one
    top = top_cov[:k]
    top_mean = math.fsum(top) / len(top)
    if top_mean != 0 or stats["cov_mean"] != 0:  # both 0: every advantage equal, no covariance
        stats["cov_top_concentration"] = _ratio(top_mean, stats["cov_mean"])
    sequences = sum(r["rows"] for r in rows)  # at least one: N > 0
    stats["sequences"] = int(sequences)
    stats["response_length"] = N / sequences
    stats["zero_adv_token_share"] = math.fsum(groups["zero_adv_tokens"]) / N
    stats["zero_adv_sequence_share"] = math.fsum(groups["zero_adv_sequences"]) / sequences
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


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)
    return a / b


def _context_ids(token_ids: Tensor, keep: Tensor, idx: Tensor, T: int) -> Tensor:
    """[k, 2 * CONTEXT_TOKENS]: the ids of the valid tokens before and after each flat index
    `idx` in its own row, -1 where the row ends or the token is masked. Device ops only."""
    n = 2 * CONTEXT_TOKENS
    offsets = torch.arange(n, device=idx.device)
    offsets = offsets - CONTEXT_TOKENS + (offsets >= CONTEXT_TOKENS)  # -4..-1, 1..4
    position = idx % T
    at = position.unsqueeze(1) + offsets
    flat = (idx - position).unsqueeze(1) + at.clamp(0, T - 1)
    valid = (at >= 0) & (at < T) & (keep.reshape(-1)[flat] > 0)
    return torch.where(valid, token_ids.reshape(-1)[flat], -1)


def _top_tokens(rows: list[list[float]], tokenizer: Tokenizer | None) -> list[dict[str, Any]]:
    tokens = []
    for cov, logp, adv, ent, token_id, position, *context in rows:
        if not math.isfinite(cov) or cov <= _LOWEST:  # masked padding, or non-finite
            continue
        token: dict[str, Any] = {"cov": cov, "logp": logp, "advantage": adv}
        token["entropy"] = ent if math.isfinite(ent) else None
        token["position"] = int(position)
        if math.isfinite(token_id):
            token["token_id"] = int(token_id)
            if tokenizer is not None:
                token["text"] = _decode(tokenizer, [int(token_id)])
                before, after = _context(context)
                if before:
                    token["context_before"] = _decode(tokenizer, before, keep_end=True)
                if after:
                    token["context_after"] = _decode(tokenizer, after)
        tokens.append(token)
    return tokens


def _context(ids: list[float]) -> tuple[list[int], list[int]]:
    """The contiguous valid ids just before and just after the token (-1 or NaN: none)."""
    before: list[int] = []
    for x in reversed(ids[:CONTEXT_TOKENS]):
        if not x >= 0:  # NaN included
            break
        before.insert(0, int(x))
    after: list[int] = []
    for x in ids[CONTEXT_TOKENS:]:
        if not x >= 0:
            break
        after.append(int(x))
    return before, after


def _decode(tokenizer: Tokenizer, token_ids: list[int], *, keep_end: bool = False) -> str | None:
    try:
        text = tokenizer.decode(token_ids)
    except Exception:  # a tokenizer that cannot decode an id must not lose the report
        return None
    return text[-MAX_TEXT_CHARS:] if keep_end else text[:MAX_TEXT_CHARS]
