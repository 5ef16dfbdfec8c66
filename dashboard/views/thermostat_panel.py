"""The Control page's thermostat panel: its live state, and a form to enable or pause it, set
the target (a value or a schedule, in nats or as a fraction of the start entropy), the knob it
drives and that knob's bounds. Applied with If-Match, as the control."""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard import api, thermostat
from entmon.wire.knobs import KNOB_BY_NAME, KNOBS, THERMOSTAT_KNOB

ACTUATORS = tuple(k.name for k in KNOBS if k.raises_entropy)
STATUS_TEXT = {
    "off": "off",
    "running": "running",
    "overridden": "paused: a person changed the control",
    "paused_by_fault": "paused by a fault",
}
RELATIVE, NATS = "fraction of the start entropy", "nats"


def _fmt(value: Any, spec: str = ".4g") -> str:
    number = api.number(value)
    return "—" if number is None else format(number, spec)


def status(state: dict[str, Any]) -> None:
    """One line of state, the pause's reason, and the last decisions."""
    text = STATUS_TEXT.get(state["status"], state["status"])
    knob = state.get("knob")
    parts = [f"Thermostat **{text}**"]
    if knob:
        parts.append(f"drives `{knob}` = {_fmt(state.get('actuator_value'))}")
    if state.get("target") is not None:
        parts.append(f"target {_fmt(state['target'], '.3f')} nats at step {state['last_step']}")
    if state.get("error") is not None:
        parts.append(f"log error {_fmt(state['error'], '+.3f')}")
    st.markdown(" · ".join(parts))
    if state["status"] in ("overridden", "paused_by_fault"):
        st.warning(f"{state.get('reason') or 'paused'}. Enable it again to resume from the knob's "
                   "current value (no jump).")  # fmt: skip
    decisions = state.get("decisions") or []
    if decisions:
        st.dataframe(
            [{"step": d["step"], "action": d["action"], "value": d.get("value"),
              "reason": d["reason"]} for d in decisions],
            hide_index=True, key="thermostat-decisions",
        )  # fmt: skip


def form(run: str, state: dict[str, Any]) -> tuple[bool, dict[str, Any], str] | None:
    """(enabled, settings, reason) when the user pressed Apply; None otherwise. The settings
    keep every field the form does not show (the gains) as they are."""
    settings = dict(state.get("settings") or {})
    target = settings.get("target") or {}
    with st.form(f"thermostat-{run}-v{state['version']}"):
        enabled = st.toggle("Enabled", value=bool(state["enabled"]))
        left, right = st.columns(2)
        current = settings.get("knob", THERMOSTAT_KNOB)
        knob = left.selectbox(
            "Knob it drives", ACTUATORS, format_func=lambda name: KNOB_BY_NAME[name].label,
            index=ACTUATORS.index(current) if current in ACTUATORS else 0,
        )  # fmt: skip
        unit = right.radio(
            "Target in", (RELATIVE, NATS), index=0 if target.get("of_start", True) else 1,
            horizontal=True,
        )  # fmt: skip
        schedule = st.text_input(
            "Target: a value, or step:value points joined linearly",
            value=thermostat.format_schedule(target["points"])
            if target.get("points")
            else thermostat.DEFAULT_SCHEDULE,
            help="e.g. 0.5 (constant), or 0:0.8, 300:0.1 (from 0.8 at step 0 to 0.1 at step 300)",
        )
        cols = st.columns(3)
        band = cols[0].number_input(
            "Band (± fraction of the target, 0: none)", min_value=0.0, max_value=0.99,
            value=float(settings.get("band") or 0.0), step=0.01, format="%.2f",
        )  # fmt: skip
        lower = cols[1].number_input(
            "Knob lower bound", min_value=0.0, value=float(settings.get("lower", 0.0)),
            format="%.6f",
        )  # fmt: skip
        upper = cols[2].number_input(
            "Knob upper bound (empty: the law's default)", min_value=0.0,
            value=api.number(settings.get("upper")), format="%.6f",
        )  # fmt: skip
        reason = st.text_input("Reason (kept in the audit log)", key=f"thermostat-{run}-reason")
        if not st.form_submit_button("Apply thermostat", type="primary"):
            return None
    try:
        points = thermostat.parse_schedule(schedule)
    except ValueError as e:
        st.error(str(e))
        return None
    settings.update(knob=knob, target={"points": points, "of_start": unit == RELATIVE},
                    band=band or None, lower=lower, upper=upper or None)  # fmt: skip
    if knob != current:  # the bounds shown were the old knob's: the new one's defaults apply
        for name in ("lower", "upper", "floor"):
            settings.pop(name, None)
        row = KNOB_BY_NAME[knob]
        if row.lo_open:  # 0 is outside its range (clip ratios): never below its default
            settings["lower"] = row.default
    return enabled, settings, reason


def render(http: Any, run: str) -> None:
    st.subheader("Thermostat")
    st.caption(
        "Turns one knob once per step so that entropy follows the target; a person's change of "
        "the control pauses it."
    )
    try:
        state = api.get_thermostat(http, run)
    except api.ApiError as e:
        st.error(str(e))
        return
    applied = st.session_state.pop("thermostat_applied", None)
    if applied is not None:
        st.success(applied)
    status(state)
    submitted = form(run, state)
    if submitted is None:
        return
    enabled, settings, reason = submitted
    try:
        result = api.put_thermostat(
            http, run, version=state["version"], enabled=enabled, settings=settings, reason=reason
        )
    except api.ApiError as e:
        st.error(str(e))
        return
    if not result.applied:
        st.error(
            f"Not applied: the thermostat changed to version {result.thermostat['version']} since "
            f"you loaded version {state['version']}. Check it and apply again."
        )
        return
    new = result.thermostat
    st.session_state.thermostat_applied = (
        f"Thermostat {'enabled' if new['enabled'] else 'disabled'} (settings version "
        f"{new['version']})."
    )
    st.rerun()
