"""GRPO group health on the Run page: zero-advantage shares, response lengths, and entropy by
response length (client/stats.py computes them). Pure functions of API data, like charts.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from dashboard.api import series
from dashboard.charts import _layout

# The statistics and histograms the Run page asks the API for.
STATS = ("zero_adv_sequence_share", "zero_adv_token_share", "response_length")
HISTOGRAMS = ("response_length", "entropy_by_length")
ALERT_SHARE = 0.8  # ZeroAdvantageSequences (deploy/prometheus/rules/entmon.rules.yml)
SENT_BY = "computed by Monitor.policy_loss"


def zero_advantage(steps: Sequence[Mapping[str, Any]]) -> go.Figure:
    """The shares of sequences and of tokens with zero advantage over steps, with the alert's
    threshold: sequences of a GRPO group that all scored alike teach nothing."""
    fig = go.Figure()
    for stat, name in (
        ("zero_adv_sequence_share", "sequences"),
        ("zero_adv_token_share", "tokens"),
    ):
        xs, ys = series(steps, stat)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines"))
    if any(trace.x for trace in fig.data):
        fig.add_hline(
            y=ALERT_SHARE, line_dash="dot", line_color="gray",
            annotation_text=f"alert above {ALERT_SHARE:.0%}",
        )  # fmt: skip
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="zero-advantage share", range=[0, 1], tickformat=".0%")
    return _layout(fig, "Zero-advantage shares", empty=f"No zero-advantage shares yet ({SENT_BY}).")


def mean_length(steps: Sequence[Mapping[str, Any]]) -> go.Figure:
    xs, ys = series(steps, "response_length")
    fig = go.Figure(go.Scatter(x=xs, y=ys, name="mean response length", mode="lines"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="tokens", rangemode="tozero")
    return _layout(fig, "Mean response length", empty="No response lengths reported yet.")


def length_labels(upper: Sequence[float]) -> list[str]:
    """Each bucket's lengths: bucket i holds the integers upper[i-1] + 1 .. upper[i]."""
    labels, low = [], 1
    for bound in (int(u) for u in upper):
        labels.append(str(bound) if bound <= low else f"{low}-{bound}")
        low = bound + 1
    return [*labels, f">{int(upper[-1])}"]


def _latest(hist: Mapping[str, Any] | None) -> tuple[int, list[int], list[str], list[float]]:
    """(step, counts, labels, sums) of the latest step's buckets from the first to the last
    non-empty one; no buckets when there is none."""
    rows = (hist or {}).get("steps") or []
    if not rows:
        return -1, [], [], []
    row = rows[-1]
    counts = list(row["counts"])
    filled = [i for i, c in enumerate(counts) if c]
    if not filled:
        return row["step"], [], [], []
    lo, hi = filled[0], filled[-1] + 1
    labels = length_labels(hist["upper_bounds"])  # type: ignore[index]
    sums = row.get("sums") or [0.0] * len(counts)
    return row["step"], counts[lo:hi], labels[lo:hi], sums[lo:hi]


def length_histogram(hist: Mapping[str, Any] | None) -> go.Figure:
    """Sequences per response length (tokens) at the latest step that reported them."""
    step, counts, labels, _ = _latest(hist)
    fig = go.Figure(go.Bar(x=labels, y=counts, name="sequences"))
    fig.update_xaxes(title_text="response length (tokens)", type="category")
    fig.update_yaxes(title_text="sequences")
    title = "Response lengths" + (f", step {step}" if labels else "")
    return _layout(fig, title, empty=f"No response-length histogram yet ({SENT_BY}).")


def entropy_by_length(hist: Mapping[str, Any] | None) -> go.Figure:
    """Mean token entropy of the sequences of each response length at the latest step: the
    bucket's entropy sum over its tokens (empty buckets left out)."""
    step, tokens, labels, sums = _latest(hist)
    kept = [(label, s / n, n) for label, s, n in zip(labels, sums, tokens, strict=True) if n]
    fig = go.Figure(
        go.Bar(
            x=[label for label, _, _ in kept],
            y=[m for _, m, _ in kept],
            name="mean entropy",
            customdata=[n for *_, n in kept],
            hovertemplate="%{x}: %{y:.3f} nats over %{customdata} tokens",
        )
    )
    fig.update_xaxes(title_text="response length (tokens)", type="category")
    fig.update_yaxes(title_text="mean token entropy (nats)")
    title = "Entropy by response length" + (f", step {step}" if kept else "")
    return _layout(
        fig, title, empty=f"No entropy by response length yet ({SENT_BY} with an entropy)."
    )
