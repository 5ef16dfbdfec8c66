"""FastAPI dependencies as `Annotated` aliases, in one place.

All `async def`: FastAPI runs a plain `def` dependency in a worker thread, a hop per request that
cost more than the work itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from entmon.wire.ids import RUN_ID_PATTERN
from monitor.auth import Principal, Role, authenticate
from monitor.settings import Settings
from monitor.store import Store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]


async def _ingest(request: Request, settings: SettingsDep) -> Principal:
    return authenticate(request, settings, Role.INGEST)


async def _admin(request: Request, settings: SettingsDep) -> Principal:
    return authenticate(request, settings, Role.ADMIN)


Ingest = Annotated[Principal, Depends(_ingest)]  # the ingest role: reads and writes reports
Admin = Annotated[Principal, Depends(_admin)]
RunPath = Annotated[
    str,
    Path(
        pattern=RUN_ID_PATTERN, description="run id: [A-Za-z0-9._-]{1,128}, not starting with a dot"
    ),
]


def run_not_found(run: str) -> HTTPException:
    return HTTPException(404, f"run {run!r} not found")


async def _existing_run(run: RunPath, store: StoreDep) -> str:
    if not await store.meta(run):
        raise run_not_found(run)
    return run


ExistingRun = Annotated[str, Depends(_existing_run)]  # the {run} path of a run that has reported
