"""Run view: KPI tiles and every chart of one run, refreshed live."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from dashboard import api, charts, group_health, session, thermostat, top_tokens, versions

T = TypeVar("T")

AUDIT_MARKED = 1000  # control changes read to tell the thermostat's from a person's
# The statistics the run view draws: the API sends only these.
CHARTED = ("entropy", "reward", "cov_mean", "detached", "penalised", "candidates",
           *group_health.STATS)  # fmt: skip


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
    if ceiling is None:
        cols[3].metric("Predicted ceiling", "-", help=law.get("note") if law else None)
    elif law.get("holds"):
        cols[3].metric("Predicted ceiling", f"{ceiling:.3f}", help=law.get("verdict"))
    else:  # shown, but not as a prediction (a short label: a long one is cut in the tile)
        cols[3].metric(
            "Ceiling", f"{ceiling:.3f}", "law does not hold: no prediction",
            delta_color="off", help=law.get("verdict"),
        )  # fmt: skip
    applied = latest.get("control_version")
    cols[4].metric(
        "Control", control["loss_mode"], f"applied v{applied} of v{control['version']}"
        if applied is not None else f"v{control['version']}, none applied", delta_color="off",
    )  # fmt: skip
    last = run.get("last_report_time")
    cols[5].metric("Last report", "never" if last is None else f"{time.time() - last:.0f}s ago")


STATE_COLORS = {
    "healthy": "green", "declining": "orange", "collapsed": "red", "exploding": "violet",
    "non-finite": "red",
}  # fmt: skip


def verdicts(analysis: dict[str, Any] | None) -> None:
    """The collapse state with the rule that decided it, and every active health flag's hint."""
    if not analysis:
        return
    collapse = analysis.get("collapse") or {}
    state = collapse.get("state")
    if state:
        color = STATE_COLORS.get(state, "gray")
        st.markdown(f":{color}[**{state}**]: {collapse.get('rule', '')}")
    for flag in (analysis.get("health") or {}).get("flags", []):
        if flag.get("active"):
            st.warning(f"**{flag['flag']}**: {flag.get('rule', '')}. {flag.get('hint') or ''}")


def _fmt(value: Any, spec: str = ".3g") -> str:
    number = api.number(value)
    return "-" if number is None else format(number, spec)


def law_caption(analysis: dict[str, Any] | None) -> str:
    law = (analysis or {}).get("law") or {}
    if not law.get("enough_data"):
        return f"Law: {law.get('note', 'not enough data yet')}"
    record = (analysis or {}).get("track_record") or {}
    text = f"R = -{_fmt(law['a'])}·exp(H) + {_fmt(law['b'])}; {law.get('verdict', '')}."
    if record.get("enough_data"):
        text += (
            f" Fitted on the first {record['fit_steps']} steps, it predicted the next "
            f"{record['predicted']} with RMSE {_fmt(record['rmse'])}."
        )
    return text


def theory_caption(analysis: dict[str, Any] | None) -> str:
    theory = (analysis or {}).get("theory") or {}
    if not theory.get("enough_data"):
        return f"Theory check: {theory.get('note', 'not enough data yet')}"
    return (
        f"ΔH ≈ -η·Cov: correlation {_fmt(theory.get('correlation'))}, sign agreement "
        f"{_fmt(theory.get('sign_agreement'), '.0%')}, fitted η {_fmt(theory.get('eta'))} "
        f"over {theory['pairs']} step pairs."
    )


def fetch_or_keep(run: str, part: str, read: Callable[[], T]) -> tuple[T, str | None] | None:
    """`read()` and keep it for this session; when the API fails, the last value kept with the
    error, or None (the error shown) when there is none."""
    key = f"run-view:{run}:{part}"
    try:
        st.session_state[key] = read()
        return st.session_state[key], None
    except api.ApiError as e:
        if key in st.session_state:
            return st.session_state[key], str(e)
        st.error(str(e))
        return None


def thermostat_marks(
    http: Any, name: str, steps: list[dict[str, Any]]
) -> tuple[thermostat.TargetLine | None, set[int], int | None]:
    """The thermostat's target over the charted steps, the control versions it wrote, and the
    version the run started with (versions.started_with); none when the thermostat was never
    used and no version changes (or when they cannot be read: the chart goes on without them)."""
    if not steps:
        return None, set(), None
    try:
        state = api.get_thermostat(http, name)
        changed = state["version"] or charts.version_changes(steps)
        audit = api.get_audit(http, name, limit=AUDIT_MARKED) if changed else []
    except api.ApiError:
        return None, set(), None
    line = thermostat.target_line(state, steps[0]["step"], steps[-1]["step"])
    return line, thermostat.thermostat_versions(audit), versions.started_with(audit, steps)


def render() -> None:
    name = session.choose_run(key="run-view-run")
    if name is None:
        return
    http = session.client()

    @st.fragment(run_every=session.refresh_every())
    def live() -> None:
        # Each part is drawn as soon as its data is in: Streamlit sends elements as the script
        # runs, so the entropy chart does not wait for the histograms. Every element keeps its
        # place from one refresh to the next (the frontend matches elements by position: a chart
        # that moves down is drawn anew and is blank for a frame), so what varies in number (the
        # state, the flags, an error) lives in one container above the charts, and a failed
        # read keeps the last data drawn instead of removing the charts.
        head = fetch_or_keep(name, "head", lambda: (
            api.get_run(http, name), api.get_steps(http, name, stats=CHARTED),
            api.get_control(http, name), api.get_analysis(http, name),
        ))  # fmt: skip
        if head is None:
            return
        (run, steps, control, analysis), error = head
        kpis(run, control, analysis)
        with st.container():
            if error:
                st.warning(f"{error} (showing the last data read)")
            verdicts(analysis)
        floor = ((analysis or {}).get("collapse") or {}).get("floor_entropy")
        left, right = st.columns(2)
        target, by_thermostat, started = thermostat_marks(http, name, steps)
        left.plotly_chart(
            charts.entropy_reward(
                steps, floor=api.number(floor),
                changes=charts.version_changes(steps, started=started),
                target=target, by_thermostat=by_thermostat,
            ),
            key="entropy-chart",
        )  # fmt: skip
        right.plotly_chart(charts.law(steps, (analysis or {}).get("law")), key="law-chart")
        right.caption(law_caption(analysis))

        tail = fetch_or_keep(name, "tail", lambda: (
            {h: api.get_histograms(http, name, h) for h in ("covariance", "entropy")}
            # the latest step's (the first and the last step come back)
            | {h: api.get_histograms(http, name, h, max_points=2) for h in group_health.HISTOGRAMS},
            api.get_top_tokens(http, name),
        ))  # fmt: skip
        if tail is None:
            return
        (histograms, tokens), error = tail
        with st.container():
            if error:
                st.warning(f"{error} (showing the last data read)")
        left, right = st.columns(2)
        for column, (hist, title) in zip(
            (left, right),
            (
                ("covariance", "Token covariance (symlog buckets)"),
                ("entropy", "Token entropy (nats)"),
            ),
            strict=True,
        ):
            if histograms[hist]["steps"]:
                column.plotly_chart(charts.heatmap(histograms[hist], title), key=f"{hist}-heat")
            else:
                column.caption(f"No {hist} histograms yet (sent by Monitor.policy_loss).")
        left, right = st.columns(2)
        left.plotly_chart(charts.interventions(steps), key="interventions-chart")
        right.plotly_chart(charts.theory(steps), key="theory-chart")
        right.caption(theory_caption(analysis))
        st.subheader("GRPO group health")
        left, right = st.columns(2)
        left.plotly_chart(group_health.zero_advantage(steps), key="zero-advantage-chart")
        right.plotly_chart(group_health.mean_length(steps), key="mean-length-chart")
        left, right = st.columns(2)
        lengths, by_length = (histograms[h] for h in group_health.HISTOGRAMS)
        left.plotly_chart(group_health.length_histogram(lengths), key="length-histogram")
        right.plotly_chart(group_health.entropy_by_length(by_length), key="entropy-by-length")
        st.subheader("Highest-covariance tokens (latest step)")
        if tokens:
            st.dataframe(top_tokens.rows(tokens), hide_index=True, key="top-tokens")
        else:
            st.caption("No top tokens reported for the latest step.")
        changes_table = versions.before_after(steps, started=started)
        if changes_table:
            st.subheader("Control changes: before and after")
            st.caption("Entropy slope and reward over the same number of steps on each side")
            st.dataframe(changes_table, hide_index=True, key="version-changes")

    live()
