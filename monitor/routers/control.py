"""Versioned control with optimistic concurrency: GET gives an ETag, PUT needs If-Match."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.responses import JSONResponse

from entmon.wire.knobs import control_errors
from monitor.api_models import AuditEntry, AuditResponse, Control, ControlUpdate, StaleControl
from monitor.deps import Admin, Ingest, RunPath, StoreDep
from monitor.routers import COMMON_RESPONSES, if_match_version, invalid_fields, version_etag
from monitor.store import Store

router = APIRouter(prefix="/v1/runs", tags=["control"], responses=COMMON_RESPONSES)


def etag(control: Control) -> str:
    return version_etag(control.version)


@router.get("/{run}/control")
async def get_control(run: RunPath, store: StoreDep, _: Ingest, response: Response) -> Control:
    """The run's live control; its ETag is the version to send back as If-Match."""
    control = await store.control(run)
    response.headers["ETag"] = etag(control)
    return control


@router.put(
    "/{run}/control",
    response_model=Control,
    responses={
        412: {"model": StaleControl, "description": "the control changed since that version"},
        428: {"description": "If-Match missing"},
    },
)
async def put_control(
    run: RunPath,
    update: ControlUpdate,
    store: StoreDep,
    who: Admin,
    response: Response,
    if_match: Annotated[str | None, Header(description='the version you read, e.g. "3"')] = None,
) -> Control | JSONResponse:
    """Change some knobs. Needs an admin token and If-Match with the version you read; bumps
    the version and appends (who, when, old, new, reason) to the run's audit log."""
    if if_match is None:
        raise HTTPException(428, 'If-Match required: send the ETag of GET .../control, e.g. "3"')
    expected = if_match_version(if_match, "control")
    current = await store.control(run)
    if current.version != expected:
        return await _stale(store, run, current)
    knobs = current.knobs() | update.knobs()
    errors = control_errors(knobs)
    if errors:
        invalid_fields("body", errors)
    new = Control.model_construct(**knobs, version=expected + 1)  # validated just above
    entry = AuditEntry(
        version=new.version,
        who=who.who,
        when=time.time(),
        reason=update.reason,
        old=current,
        new=new,
    )
    stale = await store.set_control(run, expected, new, entry)
    if stale is not None:  # lost a race with another writer between the read and the write
        return await _stale(store, run, stale)
    response.headers["ETag"] = etag(new)
    return new


async def _stale(store: Store, run: str, current: Control) -> JSONResponse:
    last = await store.audit(run, 1)
    body = StaleControl(
        detail=f"control is at version {current.version}; reload it and apply your change again",
        current=current,
        last_change=last[0] if last else None,
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=412, headers={"ETag": etag(current)}
    )


@router.get("/{run}/audit")
async def get_audit(
    run: RunPath,
    store: StoreDep,
    _: Ingest,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> AuditResponse:
    return AuditResponse(run=run, entries=await store.audit(run, limit))
