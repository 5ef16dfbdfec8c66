"""Per-browser-session state: the API client, the token, live refresh, the selected run.

The token comes from ENTMON_TOKEN or the sidebar's password field, never from the URL.
"""

from __future__ import annotations

import os

import httpx
import streamlit as st

from dashboard.api import ApiError, api_url, list_runs, make_client

REFRESH_S = 2.0


@st.cache_resource
def _client(url: str, token: str | None) -> httpx.Client:
    return make_client(url, token)


def client() -> httpx.Client:
    token = st.session_state.get("token") or os.environ.get("ENTMON_TOKEN") or None
    return _client(api_url(), token)


def sidebar() -> None:
    if "live" not in st.session_state:
        st.session_state.live = True
    with st.sidebar:
        st.caption(f"API: {api_url()}")
        st.text_input("API token", type="password", key="token", help="or set ENTMON_TOKEN")
        st.toggle("Live refresh", key="live", help=f"re-read the API every {REFRESH_S:g}s")


def refresh_every() -> float | None:
    """The fragments' run_every: None while paused."""
    return REFRESH_S if st.session_state.get("live", True) else None


def choose_run(*, key: str) -> str | None:
    """A run picker kept in the URL (?run=NAME) so a link opens the same run; None (with the
    reason shown) when the API is unreachable before any run was listed, or has no run yet."""
    try:
        names = [r["run"] for r in list_runs(client())]
        st.session_state["run-names"] = names
    except ApiError as e:
        if "run-names" not in st.session_state:
            st.error(str(e))
            return None
        names = st.session_state["run-names"]  # the view's own reads say what failed
    if not names:
        st.info("No runs yet. Stream one with `client.Monitor(run=...)`, or run `entmon demo`.")
        return None
    wanted = st.query_params.get("run")
    run: str = st.selectbox(
        "Run", names, index=names.index(wanted) if wanted in names else 0, key=key
    )
    st.query_params["run"] = run
    return run
