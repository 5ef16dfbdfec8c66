"""entmon dashboard. Run with `entmon dashboard`; `/?run=NAME` opens that run's view."""

from __future__ import annotations

import streamlit as st

from dashboard import session
from dashboard.views import compare, control, overview, run


def main() -> None:
    st.set_page_config(page_title="entmon", page_icon="📉", layout="wide")
    session.sidebar()
    run_given = "run" in st.query_params  # a link to one run opens its view at "/"
    pages = [
        st.Page(overview.render, title="Runs", url_path="runs", default=not run_given),
        st.Page(run.render, title="Run", url_path="run", default=run_given),
        st.Page(control.render, title="Control", url_path="control"),
        st.Page(compare.render, title="Compare", url_path="compare"),
    ]
    st.navigation(pages).run()


main()
