"""Runs overview: one row per run, newest activity first."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
import streamlit as st

from dashboard import api, session

START_STEPS = 5  # "at start" = median of the first steps, as the service's analytics do


def run_row(http: httpx.Client, run: dict[str, Any], now: float) -> dict[str, Any]:
    """One overview row from the run summary, its first steps, control and analysis."""
    latest = run.get("latest") or {"stats": {}, "step": None, "control_version": None}
    stats = latest["stats"]
    entropy = api.number(stats.get("entropy"))
    start = None
    if run["first_step"] is not None:
        first_step = run["first_step"]  # a handful of steps: cheap even for a long run
        first = api.get_steps(
            http, run["run"], start=first_step, end=first_step + START_STEPS - 1, stats=("entropy",)
        )
        values = [
            float(p["stats"]["entropy"]) for p in first if p["stats"].get("entropy") is not None
        ]
        start = statistics.median(values) if values else None
    control = api.get_control(http, run["run"])
    analysis = api.get_analysis(http, run["run"]) or {}
    last = run.get("last_report_time")
    return {
        "run": run["run"],
        "step": latest["step"],
        "entropy": entropy,
        "entropy vs start": (entropy / start - 1) if entropy is not None and start else None,
        "reward": api.number(stats.get("reward")),
        "predicted ceiling": _ceiling(analysis),
        "loss mode": control["loss_mode"],
        "control": f"v{latest['control_version']} / v{control['version']}"
        if latest["control_version"] is not None
        else f"- / v{control['version']}",
        "last report": _age(now - last) if last else "never",
        "state": _state(analysis, entropy),
        "health": ", ".join(
            f["flag"] for f in (analysis.get("health") or {}).get("flags", []) if f.get("active")
        ),
        "link": f"/run?run={run['run']}",
    }


def _ceiling(analysis: dict[str, Any]) -> float | None:
    law = analysis.get("law") or {}
    value = law.get("ceiling") if isinstance(law, dict) and law.get("holds") else None
    return api.number(value) if value is not None else None  # no number where the law fails


def _state(analysis: dict[str, Any], entropy: float | None) -> str:
    collapse = analysis.get("collapse") or {}
    state = collapse.get("state") if isinstance(collapse, dict) else None
    if state:
        return str(state)
    if entropy is not None and entropy != entropy:  # NaN: diverged, whatever the analytics say
        return "non-finite"
    return "-"


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render() -> None:
    st.header("Runs")

    @st.fragment(run_every=session.refresh_every())
    def table() -> None:
        http = session.client()
        try:
            runs = api.list_runs(http)
            rows = [run_row(http, r, time.time()) for r in runs]
        except api.ApiError as e:
            st.error(str(e))
            return
        if not rows:
            st.info("No runs yet. Stream one with `client.Monitor(run=...)`, or run `entmon demo`.")
            return
        st.dataframe(
            rows,
            hide_index=True,
            column_config={
                "entropy vs start": st.column_config.NumberColumn(format="percent"),
                "link": st.column_config.LinkColumn("open", display_text="open"),
            },
            key="runs-table",
        )

    table()
