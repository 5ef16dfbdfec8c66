"""Every Prometheus metric entmon exposes, defined in this one module.

Two kinds: service metrics of this process (request latency, reports accepted / duplicate /
rejected), and per-run series rebuilt from Redis at each scrape, so N replicas behind one load
balancer expose identical per-run values and never double count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from entmon.wire.knobs import KNOBS, NUMERIC_KNOBS
from entmon.wire.layouts import upper_bound_labels
from monitor.analysis import FLAGS, STATES
from monitor.api_models import THERMOSTAT_STATUSES, Control, StepPoint

if TYPE_CHECKING:
    from monitor.gauges import AnalysisGauges
    from monitor.thermostat.record import ThermostatGauges

PREFIX = "entmon"
# Request latency buckets for a JSON API answering from a local Redis: 0.5 ms .. 2.5 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

SERVICE_REGISTRY = CollectorRegistry(auto_describe=True)
REQUEST_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=SERVICE_REGISTRY,
)
REPORTS_INGESTED = Counter(
    f"{PREFIX}_ingested_reports_total",
    "Step reports this replica stored (new), recognised as duplicates, or found expired "
    "(older than the retention window: not stored)",
    ["outcome"],
    registry=SERVICE_REGISTRY,
)
REPORTS_REJECTED = Counter(
    f"{PREFIX}_rejected_reports_total",
    "Ingest requests this replica rejected, by reason",
    ["reason"],
    registry=SERVICE_REGISTRY,
)
# Known label values exist from the start at 0, so the first rejection is an increase rate() sees.
for _reason in ("invalid", "body_too_large", "too_many_runs"):
    REPORTS_REJECTED.labels(_reason)
for _outcome in ("accepted", "duplicate", "expired"):
    REPORTS_INGESTED.labels(_outcome)

# Latest-step gauges: (metric name, stat name, help).
STEP_GAUGES = (
    ("policy_entropy", "entropy", "Mean token entropy of the latest step, nats"),
    ("reward", "reward", "Mean reward (or accuracy) of the latest step"),
    ("covariance_mean", "cov_mean", "Mean per-token Cov(logp, advantage), latest step"),
    ("covariance_std", "cov_std", "Std of per-token covariance, latest step"),
    ("covariance_max", "cov_max", "Max per-token covariance, latest step"),
    ("covariance_top_concentration", "cov_top_concentration",
     "Mean covariance of the top 0.02% tokens over the overall mean, latest step"),
    ("abs_log_ratio_mean", "abs_log_ratio_mean", "Mean |logp - old_logp|, latest step"),
    ("penalised_abs_log_ratio_mean", "penalised_abs_log_ratio_mean",
     "Mean |logp - old_logp| over the KL-Cov penalised tokens, latest step"),
    ("ppo_clip_fraction", "ppo_clip_frac", "PPO clip fraction, latest step"),
    ("response_length", "response_length", "Mean response length in tokens, latest step"),
    ("zero_advantage_sequence_share", "zero_adv_sequence_share",
     "Share of sequences whose tokens all have zero advantage (GRPO groups that all scored "
     "the same: they teach nothing), latest step"),
    ("zero_advantage_token_share", "zero_adv_token_share",
     "Share of valid tokens with zero advantage, latest step"),
)  # fmt: skip
# Per-run counters kept in the run's meta hash: (metric name without _total, meta field, help).
RUN_COUNTERS = (
    ("reports", "reports", "Step reports stored (one per rank and step)"),
    ("tokens", "tokens", "Valid response tokens seen"),
    ("tokens_detached", "detached", "Tokens detached by Clip-Cov"),
    ("tokens_penalised", "penalised", "Tokens penalised by KL-Cov"),
    ("client_dropped_reports", "client_drops", "Reports the clients dropped before sending"),
)
# (metric name, histogram name, the mean statistic that gives its sum, help)
HISTOGRAMS = (
    ("token_entropy", "entropy", "entropy", "Token entropy distribution of the latest step, nats"),
    ("token_covariance", "covariance", "cov_mean",
     "Per-token covariance distribution of the latest step"),
)  # fmt: skip


class RunSnapshot:
    """What the exposition needs of one run, read from Redis before rendering."""

    def __init__(
        self,
        run: str,
        *,
        latest: StepPoint | None,
        meta: Mapping[str, str],
        control: Control,
        start_entropy: float | None,
        histograms: Mapping[str, Mapping[str, Any]],
        gauges: AnalysisGauges | None = None,
        thermostat: ThermostatGauges | None = None,
    ) -> None:
        self.run = run
        self.latest = latest
        self.meta = meta
        self.control = control
        self.start_entropy = start_entropy
        self.histograms = histograms
        self.gauges = gauges
        self.thermostat = thermostat


def _value(x: float) -> str:
    """A sample value as the text format writes it (Go's float syntax for the specials)."""
    if math.isfinite(x):
        return repr(float(x))
    return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")


class _Text:
    """The text exposition format (0.0.4) written directly: prometheus_client's Metric and
    Sample objects cost about 30 us a sample, and a run has about 170 samples (most of them
    histogram buckets), so 5,000 runs took seconds to render (bench/bench_scrape.py). Run ids
    and every other label value here are [A-Za-z0-9._-]: nothing to escape."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, help_: str, lines: list[str]) -> None:
        self.parts.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
        self.parts.extend(lines)


def render_runs(snapshots: Iterable[RunSnapshot]) -> str:
    """Every per-run family of the given runs, in the text format."""
    snaps = list(snapshots)
    out = _Text()
    for name, stat, help_ in STEP_GAUGES:
        lines = []
        for s in snaps:
            value = s.latest.stats.get(stat) if s.latest else None
            if value is not None:
                lines.append(f'{PREFIX}_{name}{{run="{s.run}"}} {_value(value)}\n')
        out.family(f"{PREFIX}_{name}", "gauge", help_, lines)

    rel, last_step, last_time, nonfinite = [], [], [], []
    for s in snaps:
        label = f'{{run="{s.run}"}}'
        entropy = s.latest.stats.get("entropy") if s.latest else None
        if entropy is not None and s.start_entropy:
            rel.append(
                f"{PREFIX}_policy_entropy_relative{label} {_value(entropy / s.start_entropy)}\n"
            )
        if s.latest is not None:
            last_step.append(f"{PREFIX}_last_step{label} {_value(s.latest.step)}\n")
            bad = sum(
                1 for v in s.latest.stats.values() if isinstance(v, float) and not math.isfinite(v)
            )
            bad += sum(1 for h in s.histograms.values() if h.get("nonfinite"))
            nonfinite.append(f"{PREFIX}_nonfinite_statistics{label} {_value(bad)}\n")
        if "last_report_time" in s.meta:
            when = _value(float(s.meta["last_report_time"]))
            last_time.append(f"{PREFIX}_last_report_timestamp_seconds{label} {when}\n")
    out.family(
        f"{PREFIX}_policy_entropy_relative",
        "gauge",
        "Latest entropy over the median entropy of the run's first steps",
        rel,
    )
    out.family(f"{PREFIX}_last_step", "gauge", "Latest step reported", last_step)
    out.family(
        f"{PREFIX}_last_report_timestamp_seconds",
        "gauge",
        "Unix time of the run's last report",
        last_time,
    )
    out.family(
        f"{PREFIX}_nonfinite_statistics",
        "gauge",
        "Non-finite statistics in the latest step (the run diverged when > 0)",
        nonfinite,
    )

    for name, field, help_ in RUN_COUNTERS:
        total = f"{PREFIX}_{name}_total"
        lines = [f'{total}{{run="{s.run}"}} {_value(float(s.meta.get(field, 0)))}\n' for s in snaps]
        out.family(total, "counter", help_, lines)

    # A knob with choices (loss_mode) is a gauge of its own, 1 for the current choice.
    choice_knobs = [k.name for k in KNOBS if not k.numeric]
    choices: dict[str, list[str]] = {name: [] for name in choice_knobs}
    version, applied, knobs = [], [], []
    for s in snaps:
        c = s.control
        for name in choice_knobs:
            choice = getattr(c, name)
            choices[name].append(
                f'{PREFIX}_control_{name}{{{name}="{choice}",run="{s.run}"}} 1.0\n'
            )
        version.append(f'{PREFIX}_control_version{{run="{s.run}"}} {_value(c.version)}\n')
        if s.latest is not None and s.latest.control_version is not None:
            v = _value(s.latest.control_version)
            applied.append(f'{PREFIX}_control_version_applied{{run="{s.run}"}} {v}\n')
        for knob in NUMERIC_KNOBS:
            setting = _value(getattr(c, knob.name))
            knobs.append(f'{PREFIX}_control_knob{{knob="{knob.name}",run="{s.run}"}} {setting}\n')
    for name, lines in choices.items():
        out.family(f"{PREFIX}_control_{name}", "gauge", f"1 for the run's current {name}", lines)
    out.family(f"{PREFIX}_control_version", "gauge", "Current control version", version)
    out.family(
        f"{PREFIX}_control_version_applied",
        "gauge",
        "Control version applied by every rank at the latest step",
        applied,
    )
    out.family(f"{PREFIX}_control_knob", "gauge", "Current value of each control knob", knobs)

    for name, hist, mean_stat, help_ in HISTOGRAMS:
        buckets, gcount, gsum = [], [], []
        metric = f"{PREFIX}_{name}"
        for s in snaps:
            h = s.histograms.get(hist)
            if h is None or s.latest is None:
                continue
            mean = s.latest.stats.get(mean_stat)
            cumulative, tail = 0, f'run="{s.run}"}} '
            for head, count in zip(_bucket_heads(metric, h["layout"]), h["counts"], strict=True):
                cumulative += count
                buckets.append(f"{head}{tail}{cumulative}.0\n")
            label = f'{{run="{s.run}"}}'
            gcount.append(f"{metric}_gcount{label} {cumulative}.0\n")
            weighted = float(mean) * cumulative if mean is not None else math.nan
            gsum.append(f"{metric}_gsum{label} {_value(weighted)}\n")
        out.family(metric, "histogram", help_, buckets)
        out.family(f"{metric}_gcount", "gauge", help_, gcount)
        out.family(f"{metric}_gsum", "gauge", help_, gsum)
    _render_analysis(snaps, out)
    _render_thermostat(snaps, out)
    return "".join(out.parts)


@functools.cache
def _bucket_heads(metric: str, layout: str) -> tuple[str, ...]:
    """`name_bucket{le="..",` of each bucket: the part of a bucket line that no run changes."""
    return tuple(f'{metric}_bucket{{le="{le}",' for le in upper_bound_labels(layout))


def _render_analysis(snaps: list[RunSnapshot], out: _Text) -> None:
    """Gauges of the run analysis (monitor/ANALYSIS.md), computed off the scrape path from a
    bounded sample of the run's steps (monitor/gauges.py)."""
    ceiling, holds, r2, state, health = [], [], [], [], []
    for s in snaps:
        g = s.gauges
        if g is None:
            continue
        label = f'{{run="{s.run}"}}'
        if g.holds is not None:
            holds.append(f"{PREFIX}_law_holds{label} {'1.0' if g.holds else '0.0'}\n")
        if g.ceiling is not None and g.holds:
            ceiling.append(f"{PREFIX}_predicted_reward_ceiling{label} {_value(g.ceiling)}\n")
        if g.r2 is not None:
            r2.append(f"{PREFIX}_law_fit_r2{label} {_value(g.r2)}\n")
        if g.state is not None:
            for name in STATES:
                value = "1.0" if name == g.state else "0.0"
                state.append(f'{PREFIX}_collapse_state{{run="{s.run}",state="{name}"}} {value}\n')
        for flag in FLAGS:
            value = "1.0" if flag in g.raised else "0.0"
            health.append(f'{PREFIX}_intervention_health{{flag="{flag}",run="{s.run}"}} {value}\n')
    out.family(
        f"{PREFIX}_predicted_reward_ceiling",
        "gauge",
        "Reward the entropy-performance law R = -a exp(H) + b predicts at entropy 0: b - a; "
        "absent while the law does not hold (entmon_law_holds 0)",
        ceiling,
    )
    out.family(
        f"{PREFIX}_law_holds",
        "gauge",
        "1 when the law describes the run (R^2 high enough, no reward above the ceiling's "
        "interval), so its ceiling is a prediction; 0 when it does not",
        holds,
    )
    out.family(f"{PREFIX}_law_fit_r2", "gauge", "R^2 of the entropy-performance law fit", r2)
    out.family(
        f"{PREFIX}_collapse_state",
        "gauge",
        "1 for the run's entropy collapse state, 0 for the others (none without enough data)",
        state,
    )
    out.family(
        f"{PREFIX}_intervention_health",
        "gauge",
        "1 when an intervention health flag is raised (Clip-Cov / KL-Cov doing nothing useful)",
        health,
    )


def _render_thermostat(snaps: list[RunSnapshot], out: _Text) -> None:
    """The thermostat of each run that has one (monitor/thermostat/THERMOSTAT.md)."""
    state, target, error, actuator, saturated = [], [], [], [], []
    for s in snaps:
        t = s.thermostat
        if t is None:
            continue
        label = f'{{run="{s.run}"}}'
        for name in THERMOSTAT_STATUSES:
            value = "1.0" if name == t.status else "0.0"
            state.append(f'{PREFIX}_thermostat_state{{run="{s.run}",state="{name}"}} {value}\n')
        if t.target is not None:
            target.append(f"{PREFIX}_thermostat_target_nats{label} {_value(t.target)}\n")
        if t.error is not None:
            error.append(f"{PREFIX}_thermostat_error{label} {_value(t.error)}\n")
        actuator.append(
            f'{PREFIX}_thermostat_actuator{{knob="{t.knob}",run="{s.run}"}} {_value(t.value)}\n'
        )
        saturated.append(
            f"{PREFIX}_thermostat_saturated{label} {'1.0' if t.saturated else '0.0'}\n"
        )
    out.family(
        f"{PREFIX}_thermostat_state",
        "gauge",
        "1 for the thermostat's state (off, running, overridden by a person, paused_by_fault)",
        state,
    )
    out.family(
        f"{PREFIX}_thermostat_target_nats",
        "gauge",
        "The thermostat's entropy target (setpoint) at its last decision, nats",
        target,
    )
    out.family(
        f"{PREFIX}_thermostat_error",
        "gauge",
        "ln(target / smoothed entropy) at the thermostat's last decision: > 0 entropy too low",
        error,
    )
    out.family(
        f"{PREFIX}_thermostat_actuator",
        "gauge",
        "The thermostat's knob as the loss sees it (0 while its loss mode is off)",
        actuator,
    )
    out.family(
        f"{PREFIX}_thermostat_saturated",
        "gauge",
        "1 while the actuator is at a bound and the error asks for more: it cannot hold the target",
        saturated,
    )


def redis_families(reachable: bool, supervisor: Mapping[str, Any] | None) -> list[Metric]:
    """Whether this scrape could read Redis, and the embedded Redis supervisor's view (none
    with an external Redis)."""
    redis_up = GaugeMetricFamily(
        f"{PREFIX}_redis_up", "1 when this scrape could read Redis (0: the run series are missing)"
    )
    redis_up.add_metric([], float(reachable))
    if supervisor is None:
        return [redis_up]
    status = supervisor
    up = GaugeMetricFamily(
        f"{PREFIX}_embedded_redis_up",
        "1 while the embedded redis-server runs, 0 while its supervisor restarts it",
    )
    up.add_metric([], float(status.get("state") == "up"))
    restarts = CounterMetricFamily(
        f"{PREFIX}_embedded_redis_restarts",
        "Times the supervisor restarted the embedded redis-server after it died",
    )
    restarts.add_metric([], float(status.get("restarts", 0)))
    return [redis_up, up, restarts]


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(snapshots: Iterable[RunSnapshot], extra: Iterable[Metric] = ()) -> bytes:
    own = CollectorRegistry(auto_describe=False)
    own.register(_Fixed(list(extra)))
    runs = render_runs(snapshots).encode()
    return generate_latest(SERVICE_REGISTRY) + generate_latest(own) + runs
