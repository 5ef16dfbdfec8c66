"""A run's thermostat: GET its settings and live state; PUT (admin, If-Match with the settings
version, as for the control) to enable, re-enable after an override or a fault, disable or tune
it. Every PUT is audited and resumes the law from the knob's current value (law.resume)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response
from fastapi.responses import JSONResponse

from monitor.analysis.collapse import start_entropy
from monitor.analysis.fitting import finite
from monitor.api_models import (
    StaleThermostat,
    Thermostat,
    ThermostatChange,
    ThermostatStatus,
    ThermostatUpdate,
)
from monitor.deps import Admin, Ingest, RunPath, StoreDep
from monitor.routers import COMMON_RESPONSES, if_match_version, invalid, version_etag
from monitor.store import Store
from monitor.thermostat.law import Settings, SettingsError, State, resume
from monitor.thermostat.record import Record, Thermostats, checked_settings

router = APIRouter(prefix="/v1/runs", tags=["thermostat"], responses=COMMON_RESPONSES)
SHOWN = 20  # decisions and changes a GET lists
PUT_TRIES = 5  # a decision committed between the read and the write: read again


async def _view(store: Store, run: str, record: Record | None = None) -> Thermostat:
    thermostats = Thermostats(store)
    record = record or await thermostats.read(run)
    settings, state = record.settings, record.state
    start = state.start_entropy(settings) if state and settings else None
    target = None
    if settings is not None and record.last_step is not None:
        target = settings.target.at(record.last_step, start)
    value = None
    if settings is not None:
        value = (await store.control(run)).knobs().get(settings.knob)
    return Thermostat(
        run=run,
        version=record.version,
        enabled=record.enabled,
        status=record.status,
        reason=record.reason,
        settings=settings.to_dict() if settings else None,
        knob=settings.knob if settings else None,
        actuator_value=value,
        target=target,
        error=record.error,
        start_entropy=start,
        last_step=record.last_step,
        law_state=state.to_dict() if state else None,
        decisions=await thermostats.decisions(run, SHOWN),
        changes=await thermostats.changes(run, SHOWN),
    )


@router.get("/{run}/thermostat")
async def get_thermostat(
    run: RunPath, store: StoreDep, _: Ingest, response: Response
) -> Thermostat:
    """Settings and live state; its ETag is the settings version to send back as If-Match."""
    view = await _view(store, run)
    response.headers["ETag"] = version_etag(view.version)
    return view


async def _state(store: Store, run: str, record: Record, settings: Settings) -> State:
    """The law state a PUT leaves: the old one resumed (moving averages and start entropy
    kept, no error history, the knob taken from the control as it is), or a fresh one that
    knows the run's start entropy when the run has enough steps for it."""
    if record.state is not None:
        state = resume(record.state)
        if record.settings is None or settings.target != record.settings.target:
            state = replace(state, log_t=None)  # the averaged target restarts at the new one
        return state
    points = await store.first_steps(run, settings.start_steps)
    finite_steps = [p for p in points if finite(p.stats.get("entropy")) is not None]
    if len(finite_steps) < settings.start_steps:
        return State()  # the law measures the start itself
    return State.starting(start_entropy(points, settings.start_steps), settings)


@router.put(
    "/{run}/thermostat",
    response_model=Thermostat,
    responses={
        412: {"model": StaleThermostat, "description": "settings changed since that version"},
        428: {"description": "If-Match missing"},
    },
)
async def put_thermostat(
    run: RunPath,
    update: ThermostatUpdate,
    store: StoreDep,
    who: Admin,
    response: Response,
    if_match: Annotated[str | None, Header(description='the version you read, e.g. "3"')] = None,
) -> Thermostat | JSONResponse:
    """Enable (resuming from the knob's current value), disable or tune the thermostat. Needs
    an admin token and If-Match with the version you read; audited."""
    if if_match is None:
        raise HTTPException(428, 'If-Match required: send the ETag of GET .../thermostat, e.g. "3"')
    expected = if_match_version(if_match, "thermostat")
    settings: Settings | None = None
    if update.settings is not None:
        try:
            settings = checked_settings(update.settings)
        except SettingsError as e:
            invalid("body", f"settings.{e.field}", str(e).partition(": ")[2])
    thermostats = Thermostats(store)
    for _ in range(PUT_TRIES):
        record = await thermostats.read(run)
        if record.version != expected:
            return await _stale(store, run, record)
        chosen = settings or record.settings
        if update.enabled and chosen is None:
            invalid("body", "settings", "required to enable a thermostat that has none")
        state = await _state(store, run, record, chosen) if chosen is not None else State()
        status: ThermostatStatus = "running" if update.enabled else "off"
        entry = ThermostatChange(
            version=expected + 1,
            who=who.who,
            when=time.time(),
            reason=update.reason,
            enabled=update.enabled,
            status=status,
            settings=chosen.to_dict() if chosen else None,
        )
        done, version = await thermostats.put(run, expected, record.rev, chosen, state, entry)
        if done == 1:
            response.headers["ETag"] = version_etag(version)
            return await _view(store, run)
        if done == 0:
            return await _stale(store, run, await thermostats.read(run))
    raise HTTPException(503, "the thermostat kept changing under this request: retry")


async def _stale(store: Store, run: str, record: Record) -> JSONResponse:
    body = StaleThermostat(
        detail=f"thermostat is at version {record.version}; reload it and apply your change again",
        current=await _view(store, run, record),
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=412,
        headers={"ETag": version_etag(record.version)},
    )
