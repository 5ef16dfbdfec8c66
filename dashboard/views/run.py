"""Run view: KPI tiles and every chart of one run, refreshed live."""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from dashboard import api, charts, session

# The statistics the run view draws: the API sends only these.
CHARTED = ("entropy", "reward", "cov_mean", "detached", "penalised", "candidates")


def version_changes(steps: list[dict[str, Any]]) -> list[int]:
    """Steps at which every rank first applied a new control version."""
    changes, seen = [], None
    for point in steps:
        version = point.get("control_version")
        if version is not None and seen is not None and version != seen:
            changes.append(point["step"])
        seen = version if version is not None else seen
    return changes


def kpis(run: dict[str, Any], control: dict[str, Any], analysis: dict[str, Any] | None) -> None:
    latest = run.get("latest") or {"stats": {}, "step": None, "control_version": None}
    stats = latest["stats"]
    collapse = (analysis or {}).get("collapse") or {}
    law = (analysis or {}).get("law") or {}
    cols = st.columns(6)
    cols[0].metric("Step", latest["step"])
    entropy = api.number(stats.get("entropy"))
    relative = api.number(collapse.get("relative")) if isinstance(collapse, dict) else None
    cols[1].metric(
        "Entropy",
        "-" if entropy is None else f"{entropy:.3f}",
        None if relative is None else f"{(relative - 1) * 100:+.0f}% vs start",
    )
    reward = api.number(stats.get("reward"))
    cols[2].metric("Reward", "-" if reward is None else f"{reward:.3f}")
    ceiling = api.number(law.get("ceiling")) if isinstance(law, dict) else None
    cols[3].metric("Predicted ceiling", "-" if ceiling is None else f"{ceiling:.3f}")
    applied = latest.get("control_version")
    cols[4].metric(
        "Control", control["loss_mode"], f"v{control['version']} requested, v{applied} applied"
        if applied is not None else f"v{control['version']} requested", delta_color="off",
    )  # fmt: skip
    last = run.get("last_report_time")
    cols[5].metric("Last report", "never" if last is None else f"{time.time() - last:.0f}s ago")


def render() -> None:
    http = session.client()
    try:
        runs = api.list_runs(http)
    except api.ApiError as e:
        st.error(str(e))
        return
    name = session.choose_run(runs, key="run-view-run")
    if name is None:
        return

    @st.fragment(run_every=session.refresh_every())
    def live() -> None:
        try:
            run = api.get_run(http, name)
            steps = api.get_steps(http, name, stats=CHARTED)
            control = api.get_control(http, name)
            analysis = api.get_analysis(http, name)
            cov = api.get_histograms(http, name, "covariance")
            ent = api.get_histograms(http, name, "entropy")
            tokens = api.get_top_tokens(http, name)
        except api.ApiError as e:
            st.error(str(e))
            return
        kpis(run, control, analysis)
        collapse = (analysis or {}).get("collapse") or {}
        floor = collapse.get("floor") if isinstance(collapse, dict) else None
        left, right = st.columns(2)
        left.plotly_chart(
            charts.entropy_reward(steps, floor=api.number(floor), changes=version_changes(steps)),
            key="entropy-chart",
        )
        right.plotly_chart(charts.law(steps, (analysis or {}).get("law")), key="law-chart")
        left, right = st.columns(2)
        if cov["steps"]:
            left.plotly_chart(
                charts.heatmap(cov, "Token covariance (symlog buckets)"), key="cov-heat"
            )
        else:
            left.caption("No covariance histograms yet (sent by Monitor.policy_loss).")
        if ent["steps"]:
            right.plotly_chart(charts.heatmap(ent, "Token entropy (nats)"), key="entropy-heat")
        else:
            right.caption("No entropy histograms yet.")
        left, right = st.columns(2)
        left.plotly_chart(charts.interventions(steps), key="interventions-chart")
        right.plotly_chart(charts.theory(steps), key="theory-chart")
        st.subheader("Highest-covariance tokens (latest step)")
        if tokens:
            st.dataframe(tokens, hide_index=True, key="top-tokens")
        else:
            st.caption("No top tokens reported for the latest step.")

    live()
