"""Wire schemas (pydantic v2): what the client sends and what the API answers.

Non-finite statistics are legal input (NaN entropy means the run diverged) and are written back
as the JSON strings "NaN", "Infinity", "-Infinity" so every response stays valid JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    StringConstraints,
    Tag,
    model_validator,
)

from monitor.control_rules import (
    DEFAULTS,
    control_errors,
)
from monitor.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count

RUN_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
RunId = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]
MAX_TOP_TOKENS = 64
MAX_USER_SCALARS = 128
MAX_REPORTS_PER_REQUEST = 1024
# Bounds that keep every integer exact in Redis's Lua numbers (doubles) and counters (int64).
MAX_STEP = 10**12
MAX_RANKS = 1 << 20
MAX_COUNT = 1 << 40
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]

# Statistics that add across ranks; every other statistic is a token-weighted mean except
# cov_max (max). Kept here because the service's merge and the docs both follow it.
COUNT_STATS = ("tokens", "candidates", "detached", "penalised", "client_drops")
MAX_STATS = ("cov_max",)


def _json_number(value: float | int | None) -> float | int | str | None:
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity" (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


# A statistic in a response: any number, NaN and infinities included, always valid JSON.
Stat = Annotated[float | int | None, PlainSerializer(_json_number)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class StepStats(_Wire):
    """Scalars of one step on one rank; every field optional (send what you computed)."""

    entropy: float | None = Field(None, description="mean token entropy over response tokens, nats")
    logp_mean: float | None = Field(None, description="mean log-prob of response tokens")
    adv_mean: float | None = None
    adv_std: float | None = None
    cov_mean: float | None = Field(None, description="mean per-token Cov(logp, A)")
    cov_std: float | None = None
    cov_max: float | None = None
    cov_top_concentration: float | None = Field(
        None, description="mean covariance of the top 0.02% tokens over the overall mean"
    )
    tokens: Count | None = Field(None, description="valid (response-mask) tokens")
    candidates: Count | None = Field(None, description="Clip-Cov candidates inside (lb, ub)")
    detached: Count | None = Field(None, description="tokens detached by Clip-Cov")
    penalised: Count | None = Field(None, description="tokens penalised by KL-Cov")
    abs_log_ratio_mean: float | None = Field(None, description="mean |logp - old_logp|, all tokens")
    penalised_abs_log_ratio_mean: float | None = Field(
        None, description="mean |logp - old_logp| over KL-Cov penalised tokens"
    )
    ppo_clip_frac: float | None = None
    policy_loss: float | None = None
    reward: float | None = Field(None, description="mean reward or accuracy: the R of the law")
    response_length: float | None = None
    client_drops: Count | None = Field(None, description="reports the client had to drop")


ENTROPY_BUCKETS = bucket_count(ENTROPY_LAYOUT)
COVARIANCE_BUCKETS = bucket_count(COVARIANCE_LAYOUT)


class EntropyHistogram(_Wire):
    """Token entropy counts on layout entropy-v1 (monitor/layouts.py)."""

    layout: Literal["entropy-v1"] = "entropy-v1"
    counts: list[Count] = Field(min_length=ENTROPY_BUCKETS, max_length=ENTROPY_BUCKETS)
    nonfinite: Count = Field(0, description="NaN values, which belong to no bucket")


class CovarianceHistogram(_Wire):
    """Per-token covariance counts on layout cov-symlog-v1 (monitor/layouts.py)."""

    layout: Literal["cov-symlog-v1"] = "cov-symlog-v1"
    counts: list[Count] = Field(min_length=COVARIANCE_BUCKETS, max_length=COVARIANCE_BUCKETS)
    nonfinite: Count = Field(0, description="NaN values, which belong to no bucket")


class StepHistograms(_Wire):
    entropy: EntropyHistogram | None = None
    covariance: CovarianceHistogram | None = None


class TopToken(_Wire):
    cov: float
    logp: float
    advantage: float
    entropy: float | None = None
    token_id: int | None = None
    position: int | None = None
    text: str | None = Field(None, max_length=256)


class StepReport(_Wire):
    """One training step on one rank. Idempotent per (run, rank, step)."""

    step: int = Field(ge=0, le=MAX_STEP)
    rank: int = Field(0, ge=0, lt=MAX_RANKS)
    world_size: int = Field(1, ge=1, le=MAX_RANKS)
    time: float | None = Field(None, description="unix time the client logged the step")
    control_version: int | None = Field(
        None, ge=0, le=MAX_STEP, description="control version applied"
    )
    stats: StepStats = Field(default_factory=StepStats)
    user: dict[Annotated[str, StringConstraints(max_length=128)], float] = Field(
        default_factory=dict, max_length=MAX_USER_SCALARS, description="free-form user scalars"
    )
    histograms: StepHistograms = Field(default_factory=StepHistograms)
    top_tokens: list[TopToken] = Field(default_factory=list, max_length=MAX_TOP_TOKENS)

    def nonfinite_fields(self) -> list[str]:
        """Names of statistics that are NaN or infinite: the run diverged."""
        bad = [k for k, v in self.stats if _nonfinite(v)]
        bad += [f"user.{k}" for k, v in self.user.items() if _nonfinite(v)]
        bad += [f"histograms.{k}" for k, h in self.histograms if h is not None and h.nonfinite]
        return bad


def _nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _one_or_many(value: Any) -> str:
    return "batch" if isinstance(value, list) else "report"


# The ingest body: one report or a list. The discriminator picks the branch up front, so a bad
# report gets errors for that branch only, located as body.report... or body.batch.<i>...
ReportBody = Annotated[
    Annotated[StepReport, Tag("report")]
    | Annotated[list[StepReport], Field(max_length=MAX_REPORTS_PER_REQUEST), Tag("batch")],
    Discriminator(_one_or_many),
]


class Control(_Wire):
    """The live knobs of a run (verl names) and their version."""

    loss_mode: Literal["vanilla", "clip_cov", "kl_cov"] = DEFAULTS["loss_mode"]
    clip_cov_ratio: float = DEFAULTS["clip_cov_ratio"]
    clip_cov_lb: float = DEFAULTS["clip_cov_lb"]
    clip_cov_ub: float = DEFAULTS["clip_cov_ub"]
    kl_cov_ratio: float = DEFAULTS["kl_cov_ratio"]
    ppo_kl_coef: float = DEFAULTS["ppo_kl_coef"]
    clip_ratio_low: float = DEFAULTS["clip_ratio_low"]
    clip_ratio_high: float = DEFAULTS["clip_ratio_high"]
    version: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _valid(self) -> Control:
        errors = control_errors(self.model_dump(exclude={"version"}))
        if errors:
            raise ValueError("; ".join(errors))
        return self


class ErrorDetail(_Wire):
    detail: str


class ControlUpdate(_Wire):
    """A change of some knobs (the others keep their value) and why."""

    loss_mode: Literal["vanilla", "clip_cov", "kl_cov"] | None = None
    clip_cov_ratio: float | None = None
    clip_cov_lb: float | None = None
    clip_cov_ub: float | None = None
    kl_cov_ratio: float | None = None
    ppo_kl_coef: float | None = None
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    reason: str = Field("", max_length=1000, description="why, for the audit log")

    def knobs(self) -> dict[str, Any]:
        return self.model_dump(exclude={"reason"}, exclude_none=True)


class AuditEntry(_Wire):
    version: int = Field(description="the version this change created")
    who: str
    when: float = Field(description="unix time")
    reason: str
    old: Control
    new: Control


class AuditResponse(_Wire):
    run: str
    entries: list[AuditEntry] = Field(description="newest first")


class StaleControl(_Wire):
    """412: someone changed the control since the version you sent."""

    detail: str
    current: Control
    last_change: AuditEntry | None


class IngestResponse(_Wire):
    accepted: int = Field(description="reports stored for the first time")
    duplicates: int = Field(description="reports already stored for that (rank, step)")
    nonfinite: list[str] = Field(description="non-finite statistics seen: the run diverged")
    control: Control


class StepPoint(_Wire):
    """One step merged over the ranks that reported it."""

    step: int
    ranks: int
    time: float | None = None
    control_version: int | None = None
    stats: dict[str, Stat]
    user: dict[str, Stat] = Field(default_factory=dict)


class StepsResponse(_Wire):
    run: str
    steps: list[StepPoint]


class RankStatus(_Wire):
    rank: int
    step: int
    control_version: int | None
    time: float | None


class RunSummary(_Wire):
    run: str
    first_step: int | None
    last_step: int | None
    last_report_time: float | None
    reports: int
    latest: StepPoint | None = None
    ranks: list[RankStatus] = Field(
        default_factory=list, description="each rank's latest report: step and control version"
    )


class RunsResponse(_Wire):
    runs: list[RunSummary]


class HistogramStep(_Wire):
    step: int
    counts: list[int]
    nonfinite: int


class HistogramSeries(_Wire):
    run: str
    name: str
    layout: str
    upper_bounds: list[float] = Field(description="finite upper bounds; a last +Inf bucket follows")
    steps: list[HistogramStep]


class RankedTopToken(TopToken):
    rank: int


class TopTokensResponse(_Wire):
    run: str
    step: int
    tokens: list[RankedTopToken] = Field(description="highest covariance first")
