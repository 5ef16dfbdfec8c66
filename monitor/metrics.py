"""Every Prometheus metric entmon exposes, defined in this one module.

Two kinds: service metrics of this process (request latency, reports accepted / duplicate /
rejected), and per-run series rebuilt from Redis at each scrape, so N replicas behind one load
balancer expose identical per-run values and never double count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from entmon.wire.knobs import KNOBS, NUMERIC_KNOBS
from entmon.wire.layouts import upper_bound_labels
from monitor.analysis import FLAGS, STATES, Analysis
from monitor.api_models import Control, StepPoint

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
    "Step reports this replica stored (new) or recognised as duplicates",
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
for _reason in ("invalid", "body_too_large"):
    REPORTS_REJECTED.labels(_reason)
for _outcome in ("accepted", "duplicate"):
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
        analysis: Analysis | None = None,
    ) -> None:
        self.run = run
        self.latest = latest
        self.meta = meta
        self.control = control
        self.start_entropy = start_entropy
        self.histograms = histograms
        self.analysis = analysis


def run_families(snapshots: Iterable[RunSnapshot]) -> list[Metric]:
    snaps = list(snapshots)
    families: list[Metric] = []
    for name, stat, help_ in STEP_GAUGES:
        g = GaugeMetricFamily(f"{PREFIX}_{name}", help_, labels=["run"])
        for s in snaps:
            value = s.latest.stats.get(stat) if s.latest else None
            if value is not None:
                g.add_metric([s.run], float(value))
        families.append(g)

    rel = GaugeMetricFamily(
        f"{PREFIX}_policy_entropy_relative",
        "Latest entropy over the median entropy of the run's first steps",
        labels=["run"],
    )
    last_step = GaugeMetricFamily(f"{PREFIX}_last_step", "Latest step reported", labels=["run"])
    last_time = GaugeMetricFamily(
        f"{PREFIX}_last_report_timestamp_seconds",
        "Unix time of the run's last report",
        labels=["run"],
    )
    nonfinite = GaugeMetricFamily(
        f"{PREFIX}_nonfinite_statistics",
        "Non-finite statistics in the latest step (the run diverged when > 0)",
        labels=["run"],
    )
    for s in snaps:
        entropy = s.latest.stats.get("entropy") if s.latest else None
        if entropy is not None and s.start_entropy:
            rel.add_metric([s.run], float(entropy) / s.start_entropy)
        if s.latest is not None:
            last_step.add_metric([s.run], s.latest.step)
            bad = sum(
                1 for v in s.latest.stats.values() if isinstance(v, float) and not math.isfinite(v)
            )
            bad += sum(1 for h in s.histograms.values() if h.get("nonfinite"))
            nonfinite.add_metric([s.run], bad)
        if "last_report_time" in s.meta:
            last_time.add_metric([s.run], float(s.meta["last_report_time"]))
    families += [rel, last_step, last_time, nonfinite]

    for name, field, help_ in RUN_COUNTERS:
        c = CounterMetricFamily(f"{PREFIX}_{name}", help_, labels=["run"])
        for s in snaps:
            c.add_metric([s.run], float(s.meta.get(field, 0)))
        families.append(c)

    # A knob with choices (loss_mode) is a gauge of its own, 1 for the current choice.
    choices = {
        k.name: GaugeMetricFamily(
            f"{PREFIX}_control_{k.name}",
            f"1 for the run's current {k.name}",
            labels=["run", k.name],
        )
        for k in KNOBS
        if not k.numeric
    }
    version = GaugeMetricFamily(
        f"{PREFIX}_control_version", "Current control version", labels=["run"]
    )
    applied = GaugeMetricFamily(
        f"{PREFIX}_control_version_applied",
        "Control version applied by every rank at the latest step",
        labels=["run"],
    )
    knobs = GaugeMetricFamily(
        f"{PREFIX}_control_knob", "Current value of each control knob", labels=["run", "knob"]
    )
    for s in snaps:
        for name, gauge in choices.items():
            gauge.add_metric([s.run, getattr(s.control, name)], 1)
        version.add_metric([s.run], s.control.version)
        if s.latest is not None and s.latest.control_version is not None:
            applied.add_metric([s.run], s.latest.control_version)
        for knob in NUMERIC_KNOBS:
            knobs.add_metric([s.run, knob.name], getattr(s.control, knob.name))
    families += [*choices.values(), version, applied, knobs]

    for name, hist, mean_stat, help_ in HISTOGRAMS:
        gh = GaugeHistogramMetricFamily(f"{PREFIX}_{name}", help_, labels=["run"])
        for s in snaps:
            h = s.histograms.get(hist)
            if h is None or s.latest is None:
                continue
            mean = s.latest.stats.get(mean_stat)
            cumulative, buckets = 0, []
            for le, count in zip(upper_bound_labels(h["layout"]), h["counts"], strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            gsum = float(mean) * cumulative if mean is not None else math.nan
            gh.add_metric([s.run], buckets, gsum_value=gsum)
        families.append(gh)
    return families + analysis_families(snaps)


def analysis_families(snaps: Iterable[RunSnapshot]) -> list[Metric]:
    """Gauges of the run analysis (monitor/ANALYSIS.md), computed at scrape time from a bounded
    sample of the run's steps."""
    ceiling = GaugeMetricFamily(
        f"{PREFIX}_predicted_reward_ceiling",
        "Reward the entropy-performance law R = -a exp(H) + b predicts at entropy 0: b - a; "
        "absent while the law does not hold (entmon_law_holds 0)",
        labels=["run"],
    )
    holds = GaugeMetricFamily(
        f"{PREFIX}_law_holds",
        "1 when the law describes the run (R^2 high enough, no reward above the ceiling's "
        "interval), so its ceiling is a prediction; 0 when it does not",
        labels=["run"],
    )
    r2 = GaugeMetricFamily(
        f"{PREFIX}_law_fit_r2", "R^2 of the entropy-performance law fit", labels=["run"]
    )
    state = GaugeMetricFamily(
        f"{PREFIX}_collapse_state",
        "1 for the run's entropy collapse state, 0 for the others (none without enough data)",
        labels=["run", "state"],
    )
    health = GaugeMetricFamily(
        f"{PREFIX}_intervention_health",
        "1 when an intervention health flag is raised (Clip-Cov / KL-Cov doing nothing useful)",
        labels=["run", "flag"],
    )
    for s in snaps:
        a = s.analysis
        if a is None:
            continue
        if a.law.enough_data:
            holds.add_metric([s.run], float(a.law.holds))
        if a.law.ceiling is not None and a.law.holds:
            ceiling.add_metric([s.run], a.law.ceiling)
        if a.law.r2 is not None:
            r2.add_metric([s.run], a.law.r2)
        if a.collapse.state is not None:
            for name in STATES:
                state.add_metric([s.run, name], float(name == a.collapse.state))
        raised = {f.flag for f in a.health.flags if f.active}
        for flag in FLAGS:
            health.add_metric([s.run, flag], float(flag in raised))
    return [ceiling, holds, r2, state, health]


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(snapshots: Iterable[RunSnapshot]) -> bytes:
    runs = CollectorRegistry(auto_describe=False)
    runs.register(_Fixed(run_families(snapshots)))
    return generate_latest(SERVICE_REGISTRY) + generate_latest(runs)
