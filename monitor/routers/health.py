from __future__ import annotations

from fastapi import APIRouter, Response, status
from redis.exceptions import RedisError

from monitor.deps import StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (says nothing about Redis)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable"}})
async def readyz(store: StoreDep, response: Response) -> dict[str, str]:
    """Redis answers: ready to take reports."""
    try:
        await store.ping()
    except (RedisError, OSError) as e:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "unavailable", "reason": f"redis: {type(e).__name__}"}
    return {"status": "ready"}
