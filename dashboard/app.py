"""entmon dashboard. Run with `entmon dashboard`; `/?run=NAME` opens that run's view."""

from __future__ import annotations

import streamlit as st

from dashboard import session
from dashboard.views import compare, control, overview, run


def main() -> None:
    st.set_page_config(page_title="entmon", page_icon="📉", layout="wide")
    session.sidebar()
    # The same pages and paths on every run, so every URL reloads: the default page is served
    # at "/" (its url_path is not used), the others at /run, /control, /compare.
    runs = st.Page(overview.render, title="Runs", url_path="runs", default=True)
    one_run = st.Page(run.render, title="Run", url_path="run")
    pages = [
        runs,
        one_run,
        st.Page(control.render, title="Control", url_path="control"),
        st.Page(compare.render, title="Compare", url_path="compare"),
    ]
    current = st.navigation(pages)
    if current is runs and "run" in st.query_params:  # a shared /?run=NAME opens that run
        st.switch_page(one_run, query_params={"run": st.query_params["run"]})
    current.run()


main()
