"""Control panel: the run's knobs with their valid ranges, applied with optimistic concurrency."""

from __future__ import annotations

import datetime as dt
from typing import Any

import streamlit as st

from dashboard import api, session
from monitor.control_rules import LOSS_MODES, MAX_CLIP_RATIO

# knob -> (label, min, max, step, format); ranges mirror monitor/control_rules.py
NUMERIC_KNOBS: dict[str, tuple[str, float, float | None, float, str]] = {
    "clip_cov_ratio": ("Clip-Cov ratio (fraction of tokens detached)", 0.0, 1.0, 1e-4, "%.6f"),
    "clip_cov_lb": ("Clip-Cov lower covariance bound", -1e6, None, 0.5, "%.3f"),
    "clip_cov_ub": ("Clip-Cov upper covariance bound", -1e6, None, 0.5, "%.3f"),
    "kl_cov_ratio": ("KL-Cov ratio k (fraction of tokens penalised)", 0.0, 1.0, 1e-3, "%.6f"),
    "ppo_kl_coef": ("KL-Cov beta (ppo_kl_coef)", 0.0, None, 0.1, "%.4f"),
    "clip_ratio_low": ("PPO clip eps_low", 1e-6, MAX_CLIP_RATIO, 0.05, "%.4f"),
    "clip_ratio_high": ("PPO clip eps_high", 1e-6, MAX_CLIP_RATIO, 0.05, "%.4f"),
}


def describe_change(entry: dict[str, Any]) -> str:
    """'who at when: knob old -> new, ... (reason)' for a 412 or the audit log."""
    changed = [
        f"{k} {entry['old'][k]} → {entry['new'][k]}"
        for k in entry["new"]
        if k != "version" and entry["old"].get(k) != entry["new"][k]
    ]
    when = dt.datetime.fromtimestamp(entry["when"]).strftime("%H:%M:%S")
    reason = f" ({entry['reason']})" if entry.get("reason") else ""
    return f"{entry['who']} at {when}: {', '.join(changed) or 'no change'}{reason}"


def _loaded() -> dict[str, dict[str, Any]]:
    if "loaded_control" not in st.session_state:
        st.session_state.loaded_control = {}
    loaded: dict[str, dict[str, Any]] = st.session_state.loaded_control
    return loaded


def _conflicts() -> dict[str, api.ControlResult]:
    if "control_conflicts" not in st.session_state:
        st.session_state.control_conflicts = {}
    conflicts: dict[str, api.ControlResult] = st.session_state.control_conflicts
    return conflicts


def knob_form(run: str, control: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The form; returns (knobs, reason) when the user pressed Apply."""
    with st.form(f"control-{run}-v{control['version']}"):  # a reload starts a fresh form
        knobs: dict[str, Any] = {
            "loss_mode": st.selectbox(
                "Loss mode", LOSS_MODES, index=LOSS_MODES.index(control["loss_mode"])
            )
        }
        cols = st.columns(2)
        for i, (knob, (label, lo, hi, step, fmt)) in enumerate(NUMERIC_KNOBS.items()):
            knobs[knob] = cols[i % 2].number_input(
                label, min_value=lo, max_value=hi, value=float(control[knob]), step=step,
                format=fmt, key=f"{run}-{control['version']}-{knob}",
            )  # fmt: skip
        reason = st.text_input("Reason (kept in the audit log)", key=f"{run}-reason")
        if st.form_submit_button("Apply", type="primary"):
            return knobs, reason
    return None


def render() -> None:
    run = session.choose_run(key="control-run")
    if run is None:
        return
    http = session.client()
    loaded, conflicts = _loaded(), _conflicts()
    if run not in loaded:
        loaded[run] = api.get_control(http, run)
    control = loaded[run]
    st.caption(f"Editing control version {control['version']} of {run}.")

    submitted = knob_form(run, control)
    if submitted is not None:
        knobs, reason = submitted
        try:
            result = api.put_control(
                http, run, version=control["version"], knobs=knobs, reason=reason
            )
        except api.ApiError as e:
            st.error(str(e))
        else:
            if result.applied:
                loaded[run] = result.control
                conflicts.pop(run, None)
                st.success(f"Applied: control version {result.control['version']}.")
            else:
                conflicts[run] = result

    conflict = conflicts.get(run)
    if conflict is not None:
        who = describe_change(conflict.last_change) if conflict.last_change else "someone"
        st.error(
            f"Not applied: the control changed to version {conflict.control['version']} "
            f"since you loaded version {control['version']}. Changed by {who}."
        )
        if st.button("Reload the current control", key=f"reload-{run}"):
            loaded[run] = conflict.control
            conflicts.pop(run)
            st.rerun()

    @st.fragment(run_every=session.refresh_every())
    def rollout() -> None:
        try:
            summary = next((r for r in api.list_runs(http) if r["run"] == run), None)
            current = api.get_control(http, run)
            audit = api.get_audit(http, run)
        except api.ApiError as e:
            st.error(str(e))
            return
        st.subheader("Rollout")
        st.write(f"Requested: version **{current['version']}** ({current['loss_mode']}).")
        ranks = (summary or {}).get("ranks", [])
        if ranks:
            st.dataframe(
                [{"rank": r["rank"], "step": r["step"], "applied version": r["control_version"],
                  "up to date": r["control_version"] == current["version"]} for r in ranks],
                hide_index=True, key="rollout-table",
            )  # fmt: skip
        else:
            st.caption("No reports yet: ranks apply the control at their next step.")
        st.subheader("Audit log")
        if audit:
            st.dataframe(
                [{"version": e["version"], "change": describe_change(e)} for e in audit],
                hide_index=True, key="audit-table",
            )  # fmt: skip
        else:
            st.caption("No changes yet.")

    rollout()
