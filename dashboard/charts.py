"""Plotly figures as pure functions of API data (tests build them without Streamlit)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.api import series
from dashboard.thermostat import TargetLine

HEIGHT = 340
ENTROPY_COLOR, REWARD_COLOR = "#1f77b4", "#d62728"
THERMOSTAT_COLOR = "#9467bd"  # its target, band and the changes it made
# Runs on the Compare page: hues far apart (Plotly's D3 palette), cycled past ten runs.
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
              "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip


def _layout(fig: go.Figure, title: str, *, empty: str = "No data yet.") -> go.Figure:
    """Title, size and legend; a figure with no point says `empty` instead of empty axes."""
    fig.update_layout(
        title=title, height=HEIGHT, margin={"l": 50, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.2}, showlegend=True,
    )  # fmt: skip
    if not any(len(getattr(trace, "x", None) or ()) for trace in fig.data):
        fig.add_annotation(text=empty, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    return fig


def _mark_changes(fig: go.Figure, changes: Sequence[tuple[int, int]], color: str = "gray") -> None:
    """A dashed line at each step where a new control version was first applied, labelled."""
    for step, version in changes:
        fig.add_vline(
            x=step, line_dash="dash", line_color=color, annotation_text=f"v{version}",
            annotation_position="top left", annotation_font_size=10,
        )  # fmt: skip


def _draw_target(fig: go.Figure, target: TargetLine) -> None:
    fig.add_trace(
        go.Scatter(
            x=target.steps, y=target.values, name="thermostat target", mode="lines",
            line={"color": THERMOSTAT_COLOR, "dash": "dash"},
        )
    )  # fmt: skip
    edges = target.edges()
    if edges is not None:
        for edge, fill in zip(edges, (None, "tonexty"), strict=True):
            fig.add_trace(
                go.Scatter(
                    x=target.steps, y=edge, mode="lines", line={"width": 0}, fill=fill,
                    fillcolor="rgba(148, 103, 189, 0.15)", showlegend=False, hoverinfo="skip",
                )
            )  # fmt: skip


def version_changes(
    steps: Sequence[Mapping[str, Any]], *, started: int | None = None
) -> list[tuple[int, int]]:
    """(step, version) where every rank first applied a new control version. Versions up to
    `started` were requested before the run's first report (versions.started_with): the run
    began with them, so the client catching up to them is not a change."""
    changes: list[tuple[int, int]] = []
    seen = None
    for point in steps:
        version = point.get("control_version")
        if version is None:
            continue
        if seen is not None and version != seen and (started is None or version > started):
            changes.append((point["step"], version))
        seen = version
    return changes


def entropy_reward(
    steps: Sequence[Mapping[str, Any]],
    *,
    floor: float | None = None,
    changes: Sequence[tuple[int, int]] = (),
    target: TargetLine | None = None,
    by_thermostat: Collection[int] = (),
) -> go.Figure:
    """Entropy (left axis) and reward (right axis) against step; the collapse floor, the
    thermostat's target (and band), and the steps where a new control version was first
    applied: a person's as labelled dashed lines, the thermostat's (`by_thermostat` versions,
    often one every few steps) as markers on the entropy line."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    hx, hy = series(steps, "entropy")
    rx, ry = series(steps, "reward")
    fig.add_trace(go.Scatter(x=hx, y=hy, name="entropy", line={"color": ENTROPY_COLOR}))
    fig.add_trace(
        go.Scatter(x=rx, y=ry, name="reward", line={"color": REWARD_COLOR}), secondary_y=True
    )
    if floor is not None:
        fig.add_hline(y=floor, line_dash="dot", annotation_text="collapse floor")
    if target is not None:
        _draw_target(fig, target)
    auto = [(s, v) for s, v in changes if v in by_thermostat]
    _mark_changes(fig, [(s, v) for s, v in changes if v not in by_thermostat])
    if auto:
        entropy_at = dict(zip(hx, hy, strict=True))
        fig.add_trace(
            go.Scatter(
                x=[s for s, _ in auto], y=[entropy_at.get(s) for s, _ in auto], mode="markers",
                name="thermostat change", text=[f"v{v} (thermostat)" for _, v in auto],
                marker={"symbol": "diamond", "size": 7, "color": THERMOSTAT_COLOR},
            )
        )  # fmt: skip
    fig.update_yaxes(title_text="entropy (nats)", secondary_y=False)
    fig.update_yaxes(title_text="reward", secondary_y=True)
    fig.update_xaxes(title_text="step")
    return _layout(fig, "Entropy and reward")


def law(steps: Sequence[Mapping[str, Any]], fit: Mapping[str, Any] | None) -> go.Figure:
    """Reward against entropy with the fitted law R = -a exp(H) + b and its ceiling b - a."""
    pairs = [
        (float(p["stats"]["entropy"]), float(p["stats"]["reward"]), p["step"])
        for p in steps
        if p["stats"].get("entropy") is not None and p["stats"].get("reward") is not None
    ]
    fig = go.Figure(
        go.Scatter(
            x=[h for h, _, _ in pairs], y=[r for _, r, _ in pairs], mode="markers",
            marker={"color": [s for *_, s in pairs], "colorscale": "Viridis", "size": 5,
                    "colorbar": {"title": "step"}},
            name="steps",
        )
    )  # fmt: skip
    if fit and fit.get("a") is not None and fit.get("b") is not None and pairs:
        a, b = float(fit["a"]), float(fit["b"])
        hi = max(h for h, _, _ in pairs)
        xs = [hi * i / 50 for i in range(51)]
        fig.add_trace(
            go.Scatter(x=xs, y=[-a * math.exp(x) + b for x in xs], name="R = -a·exp(H) + b")
        )
        label = f"ceiling {b - a:.3f}" if fit.get("holds") else "ceiling: law does not hold"
        fig.add_hline(y=b - a, line_dash="dot", annotation_text=label)
    fig.update_xaxes(title_text="entropy (nats)")
    fig.update_yaxes(title_text="reward")
    return _layout(fig, "Entropy-performance law")


def _bucket_labels(upper: Sequence[float]) -> list[str]:
    return [f"≤{u:.3g}" for u in upper] + [f">{upper[-1]:.3g}"]


def heatmap(hist: Mapping[str, Any], title: str) -> go.Figure:
    """Counts per bucket over steps; colour is log10(1 + count) so the tails stay visible, and
    empty buckets stay blank."""
    rows = hist["steps"]
    labels = _bucket_labels(hist["upper_bounds"])
    z = [
        [math.log10(1 + c) if (c := row["counts"][i]) else None for row in rows]
        for i in range(len(labels))
    ]
    fig = go.Figure(
        go.Heatmap(
            x=[row["step"] for row in rows], y=labels, z=z, colorscale="Viridis",
            colorbar={"title": "log10(1+n)"},
        )
    )  # fmt: skip
    fig.update_xaxes(title_text="step")
    return _layout(fig, title)


def interventions(steps: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Tokens detached by Clip-Cov and penalised by KL-Cov per step, with Clip-Cov candidates."""
    fig = go.Figure()
    for stat, name in (
        ("detached", "detached"),
        ("penalised", "penalised"),
        ("candidates", "candidates"),
    ):
        xs, ys = series(steps, stat)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines"))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="tokens", rangemode="tozero")  # a steady count is not a swing
    return _layout(
        fig, "Tokens touched by the intervention", empty="No Clip-Cov / KL-Cov steps yet."
    )


def theory(steps: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Measured entropy change to the next step against the step's mean covariance: the theory
    says Delta H ~ -eta * Cov, so points should fall in the upper-left / lower-right quadrants."""
    hx, hy = series(steps, "entropy")
    entropy = dict(zip(hx, hy, strict=True))
    cx, cy = series(steps, "cov_mean")
    ordered = sorted(entropy)
    following = dict(itertools.pairwise(ordered))
    points = [
        (c, entropy[following[s]] - entropy[s], s)
        for s, c in zip(cx, cy, strict=True)
        if s in following and s in entropy
    ]
    fig = go.Figure(
        go.Scatter(
            x=[c for c, _, _ in points], y=[d for _, d, _ in points], mode="markers",
            marker={"size": 5, "color": [s for *_, s in points], "colorscale": "Viridis"},
            name="steps",
        )
    )  # fmt: skip
    fig.add_hline(y=0, line_color="gray")
    fig.add_vline(x=0, line_color="gray")
    fig.update_xaxes(title_text="mean Cov(logp, A)")
    fig.update_yaxes(title_text="ΔH to next step")
    return _layout(fig, "Theory check: ΔH against covariance")


def compare(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    stat: str,
    title: str,
    *,
    started: Mapping[str, int | None] | None = None,
) -> go.Figure:
    """One line per run in hues far apart, each run's control changes marked in its colour
    (`started`: each run's versions.started_with)."""
    fig = go.Figure()
    for (run, steps), color in zip(runs.items(), itertools.cycle(RUN_COLORS)):
        xs, ys = series(steps, stat)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=run, mode="lines", line={"color": color}))
        _mark_changes(fig, version_changes(steps, started=(started or {}).get(run)), color)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=stat)
    return _layout(fig, title)
