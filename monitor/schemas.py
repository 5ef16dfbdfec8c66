"""What the API answers and the control it takes (pydantic v2). The step reports clients send
are monitor/report_schema.py.

Non-finite statistics (NaN entropy means the run diverged) are written back as the JSON strings
"NaN", "Infinity", "-Infinity" so every response stays valid JSON.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

from monitor.control_rules import (
    DEFAULTS,
    control_errors,
)

# No leading dot: ids made only of dots ("." "..") would be read as path segments and misroute.
RUN_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
RunId = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]
# Statistics that add across ranks; every other statistic is a token-weighted mean except
# cov_max (max). Kept here because the service's merge and the docs both follow it.
COUNT_STATS = ("tokens", "candidates", "detached", "penalised", "client_drops")
MAX_STATS = ("cov_max",)
# The rank of a driver's report: a process that trains nothing and reports whole-step values
# (verl's trainer: the rollout's entropy, reward, response length). It is no training rank: not
# counted in a step's `ranks` nor listed among them, its statistics are the step's (merge.py).
DRIVER_RANK = -1


def json_number(value: float | int | None) -> float | int | str | None:
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity" (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


# A statistic in a response: any number, NaN and infinities included, always valid JSON.
Stat = Annotated[float | int | None, PlainSerializer(json_number)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class Control(_Wire):
    """The live knobs of a run (verl names) and their version. Frozen: the store shares parsed
    instances between requests."""

    model_config = ConfigDict(frozen=True)

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
    expired: int = Field(
        0, description="reports older than the retention window (ENTMON_RETENTION_STEPS): dropped"
    )
    nonfinite: list[str] = Field(description="non-finite statistics seen: the run diverged")
    control: Control


class StepPoint(_Wire):
    """One step merged over the ranks that reported it."""

    step: int
    ranks: int = Field(description="training ranks that reported the step (the driver is none)")
    driver: bool = Field(False, description="whether the driver's report of the step is in")
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


class RankedTopToken(_Wire):
    """A top-covariance token of the step as a rank reported it (report_schema.TopToken)."""

    cov: float
    logp: float
    advantage: float
    entropy: float | None = None
    token_id: int | None = None
    position: int | None = None
    text: str | None = None
    rank: int


class TopTokensResponse(_Wire):
    run: str
    step: int
    tokens: list[RankedTopToken] = Field(description="highest covariance first")
