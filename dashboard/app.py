"""entmon dashboard. Run with `entmon dashboard`; `/?run=NAME` opens that run."""

from __future__ import annotations

import os
from typing import Any

import httpx
import plotly.graph_objects as go
import streamlit as st

from dashboard.api import api_url, get_steps, list_runs, make_client, series

REFRESH_S = 2.0


@st.cache_resource
def client(url: str, token: str | None) -> httpx.Client:
    return make_client(url, token)


def entropy_figure(steps: list[dict[str, Any]]) -> go.Figure:
    xs, ys = series(steps, "entropy")
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", name="entropy"))
    fig.update_layout(
        title="Policy entropy", xaxis_title="step", yaxis_title="entropy (nats)", height=380
    )
    return fig


def main() -> None:
    st.set_page_config(page_title="entmon", layout="wide")
    st.title("entmon")
    http = client(api_url(), os.environ.get("ENTMON_TOKEN"))
    try:
        runs = list_runs(http)
    except httpx.HTTPError as e:
        st.error(f"Cannot reach the monitor at {api_url()}: {e}")
        return
    names = [r["run"] for r in runs]
    if not names:
        st.info("No runs yet. Start training with `client.Monitor(run=...)`.")
        return
    wanted = st.query_params.get("run")
    run = st.selectbox("Run", names, index=names.index(wanted) if wanted in names else 0)
    st.query_params["run"] = run

    @st.fragment(run_every=REFRESH_S)
    def live() -> None:
        steps = get_steps(http, run)
        st.plotly_chart(entropy_figure(steps), key="entropy-chart")

    live()


main()
