"""API routers, one per resource."""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import HTTPException

from monitor.schemas import ErrorDetail

# Documented on every /v1 route: what auth and a Redis outage can answer.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "missing or unknown bearer token"},
    403: {
        "model": ErrorDetail,
        "description": "the token's role may not do this; with no tokens, a Host not loopback",
    },
    415: {"model": ErrorDetail, "description": "with no tokens, a body not sent as JSON"},
    503: {"model": ErrorDetail, "description": "Redis unavailable; retry after Retry-After"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such run"}
}


def invalid(where: str, name: str, message: str) -> NoReturn:
    """A 422 shaped like FastAPI's own validation errors, naming the offending field."""
    detail = [{"loc": [where, name], "msg": f"{name}: {message}", "type": "value_error"}]
    raise HTTPException(422, detail)
