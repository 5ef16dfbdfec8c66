"""Control panel: the run's knobs with their valid ranges, applied with optimistic concurrency."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import streamlit as st

from dashboard import api, preview, session
from dashboard.views import thermostat_panel
from entmon.wire.knobs import KNOBS, NUMERIC_KNOBS, Knob

SILENT_AFTER_S = 60.0  # a run quiet this long is warned about: its ranks apply nothing until back
OPEN_BOUND_MARGIN = 1e-6  # the least a knob with an open lower bound (clip ratios > 0) may take


def _min_value(knob: Knob) -> float | None:
    if knob.lo is None:
        return None
    return knob.lo + OPEN_BOUND_MARGIN if knob.lo_open else knob.lo


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


def knob_form(run: str, control: dict[str, Any]) -> tuple[dict[str, Any], str, bool] | None:
    """The form; returns (knobs, reason, apply) when the user pressed Apply (apply True) or
    Preview (False)."""
    with st.form(f"control-{run}-v{control['version']}"):  # a reload starts a fresh form
        knobs: dict[str, Any] = {
            k.name: st.selectbox(k.label, k.choices, index=k.choices.index(control[k.name]))
            for k in KNOBS
            if not k.numeric
        }
        cols = st.columns(2)
        for i, k in enumerate(NUMERIC_KNOBS):
            knobs[k.name] = cols[i % 2].number_input(
                k.label, min_value=_min_value(k), max_value=k.hi, value=float(control[k.name]),
                step=k.step, format=k.fmt, help=k.help, key=f"{run}-{control['version']}-{k.name}",
            )  # fmt: skip
        reason = st.text_input("Reason (kept in the audit log)", key=f"{run}-reason")
        apply, left = st.columns([1, 4])
        if apply.form_submit_button("Apply", type="primary"):
            return knobs, reason, True
        if left.form_submit_button("Preview on the latest step"):
            return knobs, reason, False
    return None


def show_preview(http: Any, run: str, knobs: dict[str, Any]) -> None:
    """What the entered knobs would have touched on the latest step, before applying them."""
    try:
        latest = api.get_run(http, run).get("latest") or {}
        covariance = api.get_histograms(http, run, "covariance", max_points=2)
    except api.ApiError as e:
        st.error(str(e))
        return
    result = preview.preview(knobs, latest, covariance)
    if result is None:
        st.info("No step with a token count yet: nothing to preview on.")
    else:
        st.info(result.sentence(knobs["loss_mode"]) + " Not applied yet: press Apply.")


def _warn_if_silent(http: Any, run: str) -> None:
    try:
        last = api.get_run(http, run).get("last_report_time")
    except api.ApiError:
        return  # the page says so where it reads the control
    quiet = None if last is None else time.time() - last
    if quiet is not None and quiet > SILENT_AFTER_S:
        st.warning(
            f"{run} has not reported for {quiet:.0f} s: a change is stored now but its ranks "
            "apply it only at their next step, if the run is still training."
        )


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
    _warn_if_silent(http, run)
    applied = st.session_state.pop("control_applied", None)
    if applied is not None:
        st.success(applied)

    submitted = knob_form(run, control)
    if submitted is not None and not submitted[2]:
        show_preview(http, run, submitted[0])
    elif submitted is not None:
        knobs, reason, _ = submitted
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
                # Rerun now, so the form is rebuilt for the new version before the user types
                # again: an Apply on the old version's form would be lost in the rebuild.
                st.session_state.control_applied = (
                    f"Applied: control version {result.control['version']}."
                )
                st.rerun()
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
    thermostat_panel.render(http, run)
