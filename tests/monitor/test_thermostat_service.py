"""The thermostat wired into the service (monitor/thermostat/worker.py, record.py, the
.../thermostat routes), against a real Redis and real `entmon serve` processes."""

from __future__ import annotations

import asyncio
import math
import statistics
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from monitor.api_models import ThermostatChange
from monitor.main import create_app
from monitor.report_codec import decode_reports
from monitor.settings import Settings as ServiceSettings
from monitor.store import Store
from monitor.thermostat.law import State
from monitor.thermostat.record import ThermostatGauges, Thermostats, checked_settings
from monitor.thermostat.worker import decide_step
from tests.conftest import LOCAL, ServerProcess
from tests.monitor.thermostat_plant import (
    KNOB,
    Plant,
    put_thermostat,
    settings,
    thermostat,
    wait_decided,
)

ADMIN = "admin-token-0123456789"
INGEST = "ingest-token-0123456789"


def _enable(api: TestClient, run: str = "r", **extra: Any) -> Any:
    version = api.get(f"/v1/runs/{run}/thermostat").json()["version"]
    body = {"enabled": True, "settings": settings(**extra), "reason": "hold 1 nat"}
    return api.put(f"/v1/runs/{run}/thermostat", json=body, headers={"If-Match": f'"{version}"'})


# --- settings: the control's rules (ETag / If-Match, admin), audited, 422 naming the field ---


def test_a_run_without_a_thermostat_shows_it_off(api: TestClient) -> None:
    r = api.get("/v1/runs/r/thermostat")
    assert r.status_code == 200 and r.headers["etag"] == '"0"'
    body = r.json()
    assert (body["enabled"], body["status"], body["settings"], body["decisions"]) == (
        False, "off", None, []
    )  # fmt: skip


def test_enabling_is_audited_and_bumps_the_version(api: TestClient) -> None:
    r = _enable(api)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"1"'
    body = r.json()
    assert (body["enabled"], body["status"], body["knob"]) == (True, "running", KNOB)
    (change,) = body["changes"]
    assert change["who"] == "anonymous" and change["reason"] == "hold 1 nat"
    assert change["version"] == 1 and change["settings"]["target"]["points"] == [[0, 1.0]]
    off = api.put(
        "/v1/runs/r/thermostat", json={"enabled": False}, headers={"If-Match": '"1"'}
    ).json()
    assert (off["status"], off["settings"]["knob"], len(off["changes"])) == ("off", KNOB, 2)


def test_put_without_if_match_is_428(api: TestClient) -> None:
    r = api.put("/v1/runs/r/thermostat", json={"enabled": True, "settings": settings()})
    assert r.status_code == 428
    assert api.get("/v1/runs/r/thermostat").json()["status"] == "off"


def test_a_stale_version_is_412_with_the_current_state(api: TestClient) -> None:
    assert _enable(api).status_code == 200
    r = api.put("/v1/runs/r/thermostat", json={"enabled": False}, headers={"If-Match": '"0"'})
    assert r.status_code == 412
    assert r.headers["etag"] == '"1"'
    assert r.json()["current"]["status"] == "running"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": True, "settings": settings(kp=-1)}, "settings.kp"),
        ({"enabled": True, "settings": settings(knob="nope")}, "settings.knob"),
        ({"enabled": True, "settings": settings(upper=5.0)}, "settings.upper"),
        ({"enabled": True, "settings": settings(shiny=1)}, "settings.shiny"),
        (
            {"enabled": True, "settings": {"target": {"points": [[0, -1.0]]}, "knob": KNOB}},
            "settings.target.points[0].value",
        ),
        ({"enabled": True}, "settings"),  # nothing to enable
    ],
)
def test_invalid_settings_are_422_naming_the_field(
    api: TestClient, body: dict[str, Any], field: str
) -> None:
    r = api.put("/v1/runs/r/thermostat", json=body, headers={"If-Match": '"0"'})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", field], error
    assert api.get("/v1/runs/r/thermostat").json()["version"] == 0


def test_changing_it_needs_an_admin_token(redis_url: str) -> None:
    config = ServiceSettings(redis_url=redis_url, ingest_tokens=[INGEST], admin_tokens=[ADMIN])
    with TestClient(create_app(config), base_url=LOCAL) as api:
        body = {"enabled": True, "settings": settings()}
        ingest = {"Authorization": f"Bearer {INGEST}", "If-Match": '"0"'}
        r = api.put("/v1/runs/r/thermostat", json=body, headers=ingest)
        assert r.status_code == 403
        assert api.get("/v1/runs/r/thermostat", headers=ingest).json()["status"] == "off"
        admin = {"Authorization": f"Bearer {ADMIN}", "If-Match": '"0"'}
        r = api.put("/v1/runs/r/thermostat", json=body, headers=admin)
        assert r.status_code == 200
        assert r.json()["changes"][0]["who"].startswith("admin:")


def test_the_knob_must_be_a_row_of_the_control_table() -> None:
    """law.KNOBS may name an actuator the wire table lacks: refused, naming the field; and the
    bounds must lie in the knob's range (clip_ratio_high excludes 0: its `lower` must be set)."""
    from entmon.wire.knobs import KNOB_BY_NAME
    from monitor.thermostat.law import KNOBS, SettingsError

    for knob in KNOBS:
        if knob in KNOB_BY_NAME:
            assert checked_settings(settings(knob=knob, lower=0.1, upper=0.5)).knob == knob
            if KNOB_BY_NAME[knob].lo_open:
                with pytest.raises(SettingsError) as e:
                    checked_settings(settings(knob=knob))
                assert e.value.field == "lower"
        else:
            with pytest.raises(SettingsError) as e:
                checked_settings(settings(knob=knob))
            assert e.value.field == "knob"


# --- decisions: exactly once per completed merged step ---


def test_concurrent_deciders_commit_a_step_once(redis_url: str) -> None:
    """Eight deciders of one step at once (as several processes after a resent report): each
    reads the thermostat before any commits; one commit wins, the others find the step taken."""

    async def main() -> list[Any]:
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            store = Store(redis, retention_steps=1000)
            thermostats = Thermostats(store)
            entry = ThermostatChange(
                version=1, who="t", when=0.0, reason="", enabled=True, status="running"
            )
            s = checked_settings(settings())
            assert await thermostats.put("c", 0, 0, s, State(), entry) == (1, 1)
            body = b'{"step": 0, "control_version": 0, "stats": {"entropy": 0.5}}'
            await store.ingest("c", decode_reports(body))
            # each decider's first read waits for all eight: every one has read before any commits
            together, read = asyncio.Barrier(8), thermostats.read
            first_reads = iter(range(8))

            async def read_together(run: str) -> Any:
                record = await read(run)
                if next(first_reads, None) is not None:
                    await together.wait()
                return record

            thermostats.read = read_together  # type: ignore[method-assign]
            decided = await asyncio.gather(*(decide_step(thermostats, "c", 0) for _ in range(8)))
            return [decided, await thermostats.decisions("c", 100), await store.audit("c", 100)]
        finally:
            await redis.aclose()

    decided, log, audit = asyncio.run(main())
    assert sum(d is not None for d in decided) == 1
    assert [d.step for d in log] == [0]
    assert len(audit) == 1 and audit[0].who == "thermostat"  # one knob change, not eight


def test_two_service_processes_decide_each_step_once(redis_url: str, tmp_path: Path) -> None:
    env = {"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}
    servers = [ServerProcess(env).start(), ServerProcess(env).start()]
    try:
        urls = [s.url for s in servers]
        assert put_thermostat(urls[0], "two", {"enabled": True, "settings": settings()}).is_success
        with Plant(urls, "two") as plant:  # every report to both: both try to decide it
            for _ in range(30):
                plant.run_step()
        t = thermostat(urls[1], "two")
        steps = [d["step"] for d in reversed(t["decisions"])]
        assert steps == list(range(10, 30))  # the last 20 shown: each step once, in order
        audit = httpx.get(f"{urls[0]}/v1/runs/two/audit").json()["entries"]
        written = [e for e in audit if e["who"] == "thermostat"]
        assert written and len({e["reason"] for e in written}) == len(written)
        assert [e["version"] for e in audit] == list(range(len(audit), 0, -1))
    finally:
        for s in servers:
            s.stop()


def _run(plant: Plant, steps: int) -> list[float]:
    for _ in range(steps):
        plant.run_step()
    return [h for _, h, _ in plant.history]


def test_a_run_whose_entropy_follows_the_knob_is_driven_to_its_target(
    server: ServerProcess,
) -> None:
    """The plant starts at 1.5 nats with the loss vanilla; target 1 nat. The thermostat engages
    KL-Cov with the ratio, raises it as the entropy falls and holds it near 1."""
    assert put_thermostat(server.url, "loop", {"enabled": True, "settings": settings()}).is_success
    with Plant([server.url], "loop") as plant:
        entropy = _run(plant, 110)
        assert plant.control["loss_mode"] == "kl_cov"  # engaged with the knob
    assert statistics.median(abs(h - 1.0) for h in entropy[-30:]) < 0.05
    assert min(entropy) > 0.7  # the knob caught the fall
    scrape = httpx.get(f"{server.url}/metrics").text
    assert 'entmon_thermostat_target_nats{run="loop"} 1.0' in scrape
    value = httpx.get(f"{server.url}/v1/runs/loop/control").json()[KNOB]
    actuator = f'entmon_thermostat_actuator{{knob="{KNOB}",run="loop"}} {value!r}'
    assert actuator in scrape
    assert 'entmon_thermostat_saturated{run="loop"} 0.0' in scrape
    audit = httpx.get(f"{server.url}/v1/runs/loop/audit").json()["entries"]
    assert audit and all(e["who"] == "thermostat" for e in audit)
    assert "kl_cov_ratio" in audit[-1]["reason"] and "target 1" in audit[-1]["reason"]
    # never stacked: each change was decided on a step that ran the version before it
    ran = {step: version for step, _, version in plant.history}
    for entry in audit:
        step = int(entry["reason"].rpartition("(step ")[2].rstrip(")"))
        assert ran[step] == entry["version"] - 1


def test_a_person_overrides_it_and_enabling_it_again_resumes_without_a_jump(
    server: ServerProcess,
) -> None:
    url = server.url
    assert put_thermostat(url, "o", {"enabled": True, "settings": settings()}).is_success
    with Plant([url], "o") as plant:
        _run(plant, 20)
        control = httpx.get(f"{url}/v1/runs/o/control")
        r = httpx.put(
            f"{url}/v1/runs/o/control",
            json={KNOB: 0.2, "reason": "my call"},
            headers={"If-Match": control.headers["etag"]},
        )
        assert r.status_code == 200
        t = thermostat(url, "o")
        assert (t["status"], t["enabled"]) == ("overridden", True)
        assert "control changed by anonymous" in t["reason"]
        assert t["changes"][0]["status"] == "overridden" and "my call" in t["changes"][0]["reason"]
        decided = t["last_step"]
        for _ in range(5):  # overridden: no decision, the person's value stays
            plant.run_step(wait=False)
        assert thermostat(url, "o")["last_step"] == decided
        assert plant.control[KNOB] == 0.2
        # re-enabled: resumes from the person's 0.2, moving it by one rate-limited step at most
        assert put_thermostat(url, "o", {"enabled": True}).json()["status"] == "running"
        _run(plant, 12)
    t = thermostat(url, "o")
    first = next(d for d in reversed(t["decisions"]) if d["step"] > decided and d["value"])
    assert math.exp(-0.7) * 0.2 <= first["value"] <= math.exp(0.7) * 0.2, first


def test_a_restarted_service_resumes_the_thermostat(redis_url: str, tmp_path: Path) -> None:
    env = {"ENTMON_REDIS_URL": redis_url, "ENTMON_DATA_DIR": str(tmp_path)}
    first = ServerProcess(env).start()
    try:
        assert put_thermostat(first.url, "re", {"enabled": True, "settings": settings()}).is_success
        with Plant([first.url], "re") as plant:
            _run(plant, 15)
        before = thermostat(first.url, "re")
    finally:
        first.stop()
    second = ServerProcess(env).start()
    try:
        t = thermostat(second.url, "re")
        assert (t["status"], t["last_step"], t["decisions"]) == (
            "running", 14, before["decisions"]
        )  # fmt: skip
        with Plant([second.url], "re") as resumed:
            resumed.step, resumed.entropy = plant.step, plant.entropy
            resumed.control = plant.control
            resumed.run_step()
        t = thermostat(second.url, "re")
        assert t["last_step"] == 15 and t["decisions"][1:] == before["decisions"]
        # the law went on from its stored state, not from a fresh one
        law, was = t["law_state"], before["law_state"]
        assert was["decisions"] > 0 and law["decisions"] >= was["decisions"]
        assert law["start"] == was["start"] and law["log_h"] != math.log(resumed.history[-1][1])
    finally:
        second.stop()


def test_nan_entropy_pauses_it_with_the_reason(server: ServerProcess) -> None:
    assert put_thermostat(server.url, "nan", {"enabled": True, "settings": settings()}).is_success
    with Plant([server.url], "nan") as plant:
        _run(plant, 3)
        plant.run_step("NaN")
        t = thermostat(server.url, "nan")
        assert t["status"] == "paused_by_fault"
        assert "non-finite entropy at step 3" in t["reason"]
        assert t["decisions"][0]["action"] == "pause"
        scrape = httpx.get(f"{server.url}/metrics").text
        assert 'entmon_thermostat_state{run="nan",state="paused_by_fault"} 1.0' in scrape
        assert 'entmon_thermostat_state{run="nan",state="running"} 0.0' in scrape
        version = plant.control["version"]
        _run(plant, 3)  # paused: nothing decided, nothing written
        assert thermostat(server.url, "nan")["last_step"] == 3
        assert plant.control["version"] == version
        assert put_thermostat(server.url, "nan", {"enabled": True}).json()["status"] == "running"
        _run(plant, 1)
    assert thermostat(server.url, "nan")["last_step"] == 7


def test_with_a_driver_it_decides_on_the_driver_report(server: ServerProcess) -> None:
    """verl: the ranks report no entropy; the driver (rank -1) reports the step's after them."""
    url = server.url
    assert put_thermostat(url, "v", {"enabled": True, "settings": settings()}).is_success
    version = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for step in range(3):
            for rank in (0, 1):
                body = {"step": step, "rank": rank, "world_size": 2, "control_version": version,
                        "stats": {"cov_mean": 1e-3, "tokens": 100}}  # fmt: skip
                r = http.post("/v1/runs/v/reports", json=body)
                assert r.status_code == 200
            t = thermostat(url, "v", http)
            assert t["last_step"] == (step - 1 if step else None)  # all ranks in: no entropy yet
            driver = {"step": step, "rank": -1, "stats": {"entropy": 0.5 - 0.1 * step}}
            assert http.post("/v1/runs/v/reports", json=driver).status_code == 200
            t = wait_decided(url, "v", step, http)
            assert t["last_step"] == step
            version = r.json()["control"]["version"]  # applied from the next step on
    assert [d["step"] for d in t["decisions"]] == [2, 1, 0]
    assert t["decisions"][-1]["reason"].startswith("H 0.5 < target 1")  # the driver's entropy


def test_an_unreadable_stored_thermostat_never_fails_ingest_or_get(
    api: TestClient, redis_url: str
) -> None:
    """Settings written by another version of the law (or by hand): the thermostat has none,
    the ingest path and GET still answer."""
    import redis

    assert _enable(api).status_code == 200
    with redis.Redis.from_url(redis_url) as r:
        r.hset("entmon:{r}:thermostat", mapping={"settings": '{"knob": 1}', "state": "{"})
        r.rpush("entmon:{r}:thermostat_log", '{"step": "an older format"}')
        r.rpush("entmon:{r}:thermostat_audit", "not json")
    assert api.post("/v1/runs/r/reports", json={"step": 0, "stats": {"entropy": 1}}).is_success
    body = api.get("/v1/runs/r/thermostat").json()
    assert (body["status"], body["settings"], body["law_state"]) == ("running", None, None)
    assert body["decisions"] == [] and len(body["changes"]) == 1  # the enabling, readable
    r2 = api.put("/v1/runs/r/thermostat", json={"enabled": True, "settings": settings()},
                 headers={"If-Match": '"1"'})  # fmt: skip
    assert r2.status_code == 200 and r2.json()["settings"]["knob"] == KNOB


@pytest.mark.parametrize(
    ("status", "value", "error", "band", "saturated"),
    [
        ("running", 0.5, 0.1, None, True),  # at its upper bound, entropy below the target
        ("running", 0.5, 0.05, 0.1, False),  # below it, but inside the band
        ("running", 0.4, 0.3, None, False),  # room left to rise
        ("running", 0.0, -0.5, None, False),  # off with entropy above target: a falling start
        ("overridden", 0.5, 0.3, None, False),  # a person has the knob: not the thermostat's
        ("off", 0.5, 0.3, None, False),
    ],
)
def test_saturated_means_running_at_the_upper_bound_and_still_below_the_target(
    status: str, value: float, error: float, band: float | None, saturated: bool
) -> None:
    gauges = ThermostatGauges(status=status, knob="entropy_coeff", value=value, lower=0.0,
                              upper=0.5, target=1.0, error=error, band=band)  # fmt: skip
    assert gauges.saturated is saturated
