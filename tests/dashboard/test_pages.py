"""One AppTest per page against a real monitor process holding a streamed run."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Selectbox

from tests.conftest import ServerProcess
from tests.dashboard.conftest import STEPS, collapsing_run

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT_S = 30


def page(name: str) -> AppTest:
    """A page's render() alone, as its own app."""

    def script(name: str) -> None:
        import importlib

        from dashboard import session

        session.sidebar()
        importlib.import_module(f"dashboard.views.{name}").render()

    app = AppTest.from_function(script, default_timeout=TIMEOUT_S, kwargs={"name": name})
    return app


def figure(app: AppTest, key: str) -> dict[str, object]:
    for chart in app.get("plotly_chart"):
        if chart.proto.id and key in chart.proto.id:
            spec: dict[str, object] = json.loads(chart.proto.spec)
            return spec
    raise AssertionError(f"no chart {key!r}")


def test_overview_lists_the_run(streamed: ServerProcess) -> None:
    app = page("overview")
    app.run()
    assert not app.exception
    (table,) = app.dataframe
    row = table.value.iloc[0]
    assert row["run"] == "alpha"
    assert row["step"] == STEPS - 1
    assert row["entropy vs start"] < -0.5  # collapsed from ~1.6 nats
    assert row["control"] == "v1 / v0"
    assert row["state"] == "collapsed"
    assert row["predicted ceiling"] == pytest.approx(0.9, abs=0.01)  # b - a of the streamed law


def test_run_view_draws_every_chart(streamed: ServerProcess) -> None:
    app = page("run")
    app.query_params["run"] = "alpha"
    app.run()
    assert not app.exception
    entropy = figure(app, "entropy-chart")["data"]
    assert [t["name"] for t in entropy] == ["entropy", "reward"]  # type: ignore[index]
    assert len(entropy[0]["x"]) == STEPS  # type: ignore[index]
    for key in (
        "law-chart",
        "covariance-heat",
        "entropy-heat",
        "interventions-chart",
        "theory-chart",
    ):
        assert figure(app, key)["data"], key
    assert app.metric[0].value == str(STEPS - 1)
    assert ":red[**collapsed**]" in app.markdown[0].value  # the state, from the service's analysis
    assert any("R²" in c.value for c in app.caption)  # the fitted law under its chart
    tokens = app.dataframe[0].value
    assert len(tokens) == 16 and tokens["cov"].is_monotonic_decreasing  # 8 per rank
    changes = app.dataframe[1].value  # the streamed run changes its control halfway
    assert list(changes["version"]) == ["v0 → v1"] and changes["steps compared"][0] == 20


def test_run_view_keeps_its_charts_when_the_monitor_stops_answering(
    streamed: ServerProcess,
) -> None:
    """A failed refresh warns and keeps the last data drawn instead of removing every chart."""
    app = page("run")
    app.query_params["run"] = "alpha"
    app.run()
    streamed.stop()
    app.run()
    assert not app.exception
    assert len(figure(app, "entropy-chart")["data"][0]["x"]) == STEPS  # type: ignore[index]
    assert figure(app, "theory-chart")["data"]
    assert "showing the last data read" in app.warning[0].value


def form_select(app: AppTest) -> Selectbox[str]:
    return next(s for s in app.selectbox if s.label == "Loss mode")


def apply(app: AppTest, **knobs: object) -> None:
    for key, value in knobs.items():
        if key == "loss_mode":
            form_select(app).set_value(value)
        else:
            next(n for n in app.number_input if n.key and n.key.endswith(key)).set_value(value)
    app.text_input(key="alpha-reason").set_value("test change")
    app.button[0].click()
    app.run()


def test_control_change_round_trip(streamed: ServerProcess) -> None:
    app = page("control")
    app.query_params["run"] = "alpha"
    app.run()
    assert not app.exception
    apply(app, loss_mode="kl_cov", kl_cov_ratio=0.01)
    assert not app.exception
    assert "Applied: control version 1" in app.success[0].value
    control = httpx.get(f"{streamed.url}/v1/runs/alpha/control").json()
    assert (control["version"], control["loss_mode"], control["kl_cov_ratio"]) == (
        1,
        "kl_cov",
        0.01,
    )
    audit = httpx.get(f"{streamed.url}/v1/runs/alpha/audit").json()["entries"]
    assert audit[0]["reason"] == "test change"


def test_three_applies_in_a_row_each_reach_the_server(streamed: ServerProcess) -> None:
    """Each Apply must land: the form rebuilt after one Apply used to swallow the next."""
    app = page("control")
    app.query_params["run"] = "alpha"
    app.run()
    for version, ratio in ((1, 0.01), (2, 0.02), (3, 0.03)):
        apply(app, kl_cov_ratio=ratio)
        assert not app.exception
        control = httpx.get(f"{streamed.url}/v1/runs/alpha/control").json()
        assert (control["version"], control["kl_cov_ratio"]) == (version, ratio)
        assert f"Applied: control version {version}" in app.success[0].value
        assert f"Editing control version {version} of alpha" in app.caption[0].value


def test_a_run_that_stopped_reporting_is_warned_about_before_an_edit(
    streamed: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = page("control")
    app.query_params["run"] = "alpha"
    app.run()
    assert not app.warning  # alpha reported just now
    monkeypatch.setattr("dashboard.views.control.SILENT_AFTER_S", -1.0)
    app.run()
    assert "has not reported for" in app.warning[0].value


def test_preview_says_what_a_setting_would_touch_without_applying_it(
    streamed: ServerProcess,
) -> None:
    app = page("control")
    app.query_params["run"] = "alpha"
    app.run()
    form_select(app).set_value("kl_cov")
    next(b for b in app.button if b.label.startswith("Preview")).click()
    app.run()
    assert not app.exception
    assert "would have penalised about" in app.info[0].value
    assert httpx.get(f"{streamed.url}/v1/runs/alpha/control").json()["version"] == 0


def test_stale_control_shows_who_changed_what_and_reloads(streamed: ServerProcess) -> None:
    app = page("control")
    app.query_params["run"] = "alpha"
    app.run()  # the panel loads version 0
    httpx.put(
        f"{streamed.url}/v1/runs/alpha/control",
        json={"loss_mode": "clip_cov", "reason": "a colleague"},
        headers={"If-Match": "0"},
    ).raise_for_status()
    apply(app, kl_cov_ratio=0.05)
    assert not app.exception
    message = app.error[0].value
    assert "changed to version 1" in message and "a colleague" in message
    assert "loss_mode vanilla → clip_cov" in message
    assert httpx.get(f"{streamed.url}/v1/runs/alpha/control").json()["kl_cov_ratio"] != 0.05
    reload = next(b for b in app.button if b.key == "reload-alpha")
    reload.click()
    app.run()
    assert not app.error
    assert form_select(app).value == "clip_cov"  # the form now shows the winning control


def test_compare_overlays_runs(streamed: ServerProcess) -> None:
    collapsing_run("beta", streamed.url, steps=10)
    app = page("compare")
    app.run()
    assert not app.exception
    names = sorted(t["name"] for t in figure(app, "compare-entropy")["data"])  # type: ignore[attr-defined]
    assert names == ["alpha", "beta"]


def test_app_opens_the_run_view_from_the_url(streamed: ServerProcess) -> None:
    app = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    app.query_params["run"] = "alpha"
    app.run()
    assert not app.exception
    assert figure(app, "entropy-chart")


def test_unreachable_monitor_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENTMON_URL", "http://127.0.0.1:9")
    app = page("overview")
    app.run()
    assert not app.exception
    assert "cannot reach the monitor" in app.error[0].value


def test_run_view_draws_the_group_health(streamed: ServerProcess) -> None:
    app = page("run")
    app.query_params["run"] = "alpha"
    app.run()
    assert not app.exception
    shares = figure(app, "zero-advantage-chart")["data"]
    assert [t["name"] for t in shares] == ["sequences", "tokens"]  # type: ignore[index]
    assert shares[0]["y"][-1] == pytest.approx((STEPS - 1) / STEPS)  # type: ignore[index]
    assert len(figure(app, "mean-length-chart")["data"][0]["x"]) == STEPS  # type: ignore[index]
    (lengths,) = figure(app, "length-histogram")["data"]  # type: ignore[misc]
    assert sum(lengths["y"]) == 128  # the latest step's 64 sequences of each rank
    (by_length,) = figure(app, "entropy-by-length")["data"]  # type: ignore[misc]
    assert by_length["y"] == pytest.approx([2.0, 0.5])  # short responses, then long ones
