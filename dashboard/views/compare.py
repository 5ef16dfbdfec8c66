"""Compare: entropy and reward of several runs overlaid."""

from __future__ import annotations

import streamlit as st

from dashboard import api, charts, session, versions
from dashboard.views.run import AUDIT_MARKED


def render() -> None:
    http = session.client()
    try:
        names = [r["run"] for r in api.list_runs(http)]
    except api.ApiError as e:
        st.error(str(e))
        return
    chosen = st.multiselect("Runs", names, default=names[:3], key="compare-runs")
    if not chosen:
        st.info("Pick runs to compare.")
        return

    @st.fragment(run_every=session.refresh_every())
    def overlay() -> None:
        try:
            data = {run: api.get_steps(http, run, stats=("entropy", "reward")) for run in chosen}
            started = {  # the audit only where a run changed versions: see started_with
                run: versions.started_with(api.get_audit(http, run, limit=AUDIT_MARKED), steps)
                for run, steps in data.items()
                if charts.version_changes(steps)
            }
        except api.ApiError as e:
            st.error(str(e))
            return
        left, right = st.columns(2)
        left.plotly_chart(
            charts.compare(data, "entropy", "Entropy", started=started), key="compare-entropy"
        )
        right.plotly_chart(
            charts.compare(data, "reward", "Reward", started=started), key="compare-reward"
        )

    overlay()
