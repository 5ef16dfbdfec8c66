from __future__ import annotations

from fastapi import APIRouter, Response, status
from redis.exceptions import RedisError

from monitor.deps import SettingsDep, StoreDep
from monitor.embedded_redis import read_status

router = APIRouter(tags=["health"])


@router.get("/healthz", responses={503: {"description": "the embedded Redis cannot be restarted"}})
async def healthz(settings: SettingsDep, response: Response) -> dict[str, str]:
    """The process is up. Says nothing about an external Redis; fails when the embedded one
    died and its supervisor could not bring it back (ENTMON_REDIS_RESTART_ATTEMPTS)."""
    supervisor = (
        read_status(settings.embedded_status_file) if settings.embedded_status_file else None
    )
    if supervisor is not None and supervisor.get("state") == "failed":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {
            "status": "failing",
            "reason": f"embedded redis: {supervisor.get('failures')} restarts failed in a row",
        }
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable"}})
async def readyz(settings: SettingsDep, store: StoreDep, response: Response) -> dict[str, str]:
    """Redis answers: ready to take reports."""
    supervisor = (
        read_status(settings.embedded_status_file) if settings.embedded_status_file else None
    )
    if supervisor is not None and supervisor.get("state") != "up":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {
            "status": "unavailable",
            "reason": f"embedded redis {supervisor.get('state')}: down since "
            f"{supervisor.get('down_since')}, {supervisor.get('failures')} failed restarts",
        }
    try:
        await store.ping()
    except (RedisError, OSError) as e:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "unavailable", "reason": f"redis: {type(e).__name__}"}
    return {"status": "ready"}
