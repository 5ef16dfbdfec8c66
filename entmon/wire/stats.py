"""The statistics a step report carries, and how each merges across micro-batches and ranks.

One table: the client names what it computes from it, the service decodes reports with it
(monitor/report_codec.py builds its schema from `STATS`) and merges ranks by its rules
(monitor/merge.py), and the same pooling helpers combine micro-batches in the client.

Merge rules: `sum` adds (counts); `max` takes the largest (NaN if any is NaN); `pooled_std`
pools a standard deviation around its mean (within plus between parts); `mean` weights by the
part's token count, or by the count statistic named in `weight` (a per-sequence mean weights by
`sequences`). NaN propagates: a diverged rank makes the merged value NaN, never hidden.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Merge = Literal["mean", "sum", "max", "pooled_std"]


@dataclass(frozen=True, kw_only=True)
class Stat:
    name: str
    merge: Merge = "mean"
    integer: bool = False  # a count: an integer on the wire
    around: str | None = None  # pooled_std: the mean it is pooled around
    weight: str = "tokens"  # mean: the count statistic each part is weighted by
    help: str = ""


STATS: tuple[Stat, ...] = (
    Stat(name="entropy", help="mean token entropy over response tokens, nats"),
    Stat(name="logp_mean", help="mean log-prob of response tokens"),
    Stat(name="adv_mean", help="mean advantage of response tokens"),
    Stat(name="adv_std", merge="pooled_std", around="adv_mean", help="std of the advantages"),
    Stat(name="cov_mean", help="mean per-token Cov(logp, A)"),
    Stat(name="cov_std", merge="pooled_std", around="cov_mean", help="std of per-token Cov"),
    Stat(name="cov_max", merge="max", help="largest per-token Cov"),
    Stat(
        name="cov_top_concentration",
        help="mean covariance of the top 0.02% tokens over the overall mean",
    ),
    Stat(name="tokens", merge="sum", integer=True, help="valid (response-mask) tokens"),
    Stat(name="candidates", merge="sum", integer=True, help="Clip-Cov candidates inside (lb, ub)"),
    Stat(name="detached", merge="sum", integer=True, help="tokens detached by Clip-Cov"),
    Stat(name="penalised", merge="sum", integer=True, help="tokens penalised by KL-Cov"),
    Stat(name="abs_log_ratio_mean", help="mean |logp - old_logp|, all tokens"),
    Stat(
        name="penalised_abs_log_ratio_mean",
        help="mean |logp - old_logp| over KL-Cov penalised tokens",
    ),
    Stat(name="ppo_clip_frac", help="fraction of tokens where the PPO clip binds"),
    Stat(name="policy_loss", help="the policy loss"),
    Stat(name="reward", help="mean reward or accuracy: the R of the law"),
    Stat(
        name="response_length",
        weight="sequences",
        help="mean response length in tokens (valid tokens per sequence)",
    ),
    Stat(
        name="sequences",
        merge="sum",
        integer=True,
        help="sequences (rows of the response mask) with at least one valid token",
    ),
    Stat(
        name="zero_adv_token_share",
        help="share of valid tokens whose advantage is zero (|A| <= 1e-6): they teach nothing",
    ),
    Stat(
        name="zero_adv_sequence_share",
        weight="sequences",
        help="share of sequences whose valid tokens all have zero advantage (GRPO groups "
        "whose answers all scored the same)",
    ),
    Stat(name="client_drops", merge="sum", integer=True, help="reports the client had to drop"),
)

STAT_NAMES: tuple[str, ...] = tuple(s.name for s in STATS)
COUNT_STATS: tuple[str, ...] = tuple(s.name for s in STATS if s.merge == "sum")
MAX_STATS: tuple[str, ...] = tuple(s.name for s in STATS if s.merge == "max")
INTEGER_STATS: frozenset[str] = frozenset(s.name for s in STATS if s.integer)
# std statistic -> the mean it is pooled around
POOLED_STDS: dict[str, str] = {s.name: s.around for s in STATS if s.around is not None}
# mean statistic -> the count statistic its parts are weighted by
WEIGHTS: dict[str, str] = {s.name: s.weight for s in STATS if s.merge == "mean"}
# |advantage| at or below this is zero: GRPO's (r - mean) / (std + eps) of a group that scored
# alike is exactly 0 for 0/1 rewards and ~1e-10 for others (the mean's rounding over eps)
ZERO_ADVANTAGE = 1e-6


def weighted_mean(parts: Iterable[tuple[Any, float]]) -> float:
    """Mean of (value, weight) pairs; parts of weight 0 take no part (their value may be NaN)."""
    pairs = [(v, w) for v, w in parts if w]
    total = sum(w for _, w in pairs)
    return sum(float(v) * w for v, w in pairs) / total


def pooled_std(parts: Iterable[tuple[float, float, float]]) -> tuple[float, float]:
    """(mean, std) of the union of parts given as (mean, variance, weight): the variance within
    the parts plus the spread of their means. NaN stays NaN."""
    rows = [(m, var, w) for m, var, w in parts if w]
    total = sum(w for *_, w in rows)
    grand = sum(m * w for m, _, w in rows) / total
    var = sum(w * (v + (m - grand) ** 2) for m, v, w in rows) / total
    return grand, math.sqrt(var) if not var < 0 else math.nan
