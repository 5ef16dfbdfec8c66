"""What the API answers and the control it takes (pydantic v2). The step reports clients send
are monitor/report_codec.py.

Non-finite statistics (NaN entropy means the run diverged) are written back as the JSON strings
"NaN", "Infinity", "-Infinity" so every response stays valid JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, create_model, model_validator

from entmon.wire.knobs import KNOBS, Knob, control_errors
from entmon.wire.numbers import NonFinite, to_wire

# A statistic in a response: any number, NaN and infinities included, always valid JSON.
# The schema says so: a number, or one of the strings non-finite numbers travel as.
Stat = Annotated[
    float | int | None, PlainSerializer(to_wire, return_type=float | int | NonFinite | None)
]
WireFloat = Annotated[float, PlainSerializer(to_wire, return_type=float | NonFinite)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class _ControlBase(_Wire):
    """The live knobs of a run and their version; the knob fields come from the knob table.
    Frozen: the store shares parsed instances between requests."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(0, ge=0)

    if TYPE_CHECKING:  # knobs are read as attributes; their fields are made below

        def __getattr__(self, name: str) -> Any: ...

    @model_validator(mode="after")
    def _valid(self) -> _ControlBase:
        errors = control_errors(self.knobs())
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def knobs(self) -> dict[str, Any]:
        return self.model_dump(exclude={"version"})


class _ControlUpdateBase(_Wire):
    """A change of some knobs (the others keep their value) and why."""

    reason: str = Field("", max_length=1000, description="why, for the audit log")

    def knobs(self) -> dict[str, Any]:
        return self.model_dump(exclude={"reason"}, exclude_none=True)


def _knob_type(knob: Knob) -> Any:
    return Literal[knob.choices] if knob.choices else float


def _knob_doc(knob: Knob) -> str:
    valid = f" One of {', '.join(knob.choices)}." if knob.choices else f" In {knob.interval()}."
    modes = f" Used by {', '.join(knob.modes)}." if knob.modes else ""
    return f"{knob.label}: {knob.help}.{valid}{modes}"


if TYPE_CHECKING:
    Control = _ControlBase
    ControlUpdate = _ControlUpdateBase
else:
    Control = create_model(
        "Control",
        __base__=_ControlBase,
        __doc__=_ControlBase.__doc__,
        **{k.name: (_knob_type(k), Field(k.default, description=_knob_doc(k))) for k in KNOBS},
    )
    ControlUpdate = create_model(
        "ControlUpdate",
        __base__=_ControlUpdateBase,
        __doc__=_ControlUpdateBase.__doc__,
        **{k.name: (_knob_type(k) | None, Field(None, description=_knob_doc(k))) for k in KNOBS},
    )


class ErrorDetail(_Wire):
    detail: str


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
    sums: list[float] | None = Field(
        default=None, description="entropy_by_length: the entropy sum of each bucket's tokens"
    )


class HistogramSeries(_Wire):
    run: str
    name: str
    layout: str
    upper_bounds: list[float] = Field(description="finite upper bounds; a last +Inf bucket follows")
    steps: list[HistogramStep]


class RankedTopToken(_Wire):
    """A top-covariance token of the step as a rank reported it (report_codec.TopToken)."""

    cov: WireFloat
    logp: WireFloat
    advantage: WireFloat
    entropy: WireFloat | None = None
    token_id: int | None = None
    position: int | None = None
    text: str | None = None
    context_before: str | None = Field(None, description="decoded tokens just before it")
    context_after: str | None = Field(None, description="decoded tokens just after it")
    rank: int


class TopTokensResponse(_Wire):
    run: str
    step: int
    tokens: list[RankedTopToken] = Field(description="highest covariance first")


ThermostatStatus = Literal["off", "running", "overridden", "paused_by_fault"]
THERMOSTAT_STATUSES: tuple[str, ...] = ("off", "running", "overridden", "paused_by_fault")


class ThermostatDecision(_Wire):
    """One merged step the thermostat decided on (monitor/thermostat/THERMOSTAT.md)."""

    step: int
    when: float = Field(description="unix time")
    action: str = Field(description="set, guard, hold, skip, wait, pause (law.Action)")
    reason: str
    value: WireFloat | None = Field(None, description="the knob value written; none: no change")
    control_version: int | None = Field(None, description="the control version it wrote")
    target: WireFloat | None = Field(None, description="entropy target, nats")
    error: WireFloat | None = Field(None, description="ln(target / smoothed entropy)")


class ThermostatChange(_Wire):
    """An audit entry of the thermostat: a person changed its settings, or overrode it."""

    version: int | None = Field(description="the settings version it created (none: override)")
    who: str
    when: float = Field(description="unix time")
    reason: str
    enabled: bool
    status: ThermostatStatus
    settings: dict[str, Any] | None = None


class Thermostat(_Wire):
    """A run's thermostat: its settings and live state. Its ETag is `version` (the settings')."""

    run: str
    version: int = Field(description="settings version: send it back as If-Match")
    enabled: bool
    status: ThermostatStatus = Field(
        description="off; running; overridden (a person changed the control: paused until "
        "enabled again); paused_by_fault (non-finite statistics)"
    )
    reason: str = Field(description="why overridden or paused")
    settings: dict[str, Any] | None = Field(
        description="law.Settings as JSON: target {points [[step, value]], of_start}, knob, "
        "lower, upper, floor, band, kp, ki, max_step, lead, min_change, guard_margin, "
        "guard_cut, feedforward, smoothing, start_steps"
    )
    knob: str | None = Field(description="the actuator")
    actuator_value: WireFloat | None = Field(description="the actuator's value in the control")
    target: WireFloat | None = Field(description="the entropy target at the last decided step")
    error: WireFloat | None = Field(description="ln(target / entropy) at the last decision")
    start_entropy: WireFloat | None = None
    last_step: int | None = Field(description="the last merged step decided on")
    law_state: dict[str, Any] | None = Field(
        None,
        description="law.State: what the law remembers between steps (moving averages, "
        "the commanded ln knob, the knob changes it wrote)",
    )
    decisions: list[ThermostatDecision] = Field(description="the last decisions, newest first")
    changes: list[ThermostatChange] = Field(description="settings changes, newest first")


class ThermostatUpdate(_Wire):
    """Enable (or re-enable after an override or a fault: it resumes from the knob's current
    value, without a jump) or disable the thermostat, and optionally replace its settings."""

    enabled: bool
    settings: dict[str, Any] | None = Field(
        None, description="the full settings (law.Settings); none: keep the current ones"
    )
    reason: str = Field("", max_length=1000, description="why, for the audit log")


class StaleThermostat(_Wire):
    """412: someone changed the thermostat's settings since the version you sent."""

    detail: str
    current: Thermostat
