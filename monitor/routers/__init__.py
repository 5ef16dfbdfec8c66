"""API routers, one per resource."""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import HTTPException

from monitor.api_models import ErrorDetail

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


MAX_POINTS_LIMIT = 100_000  # the most points a series query may ask for


def invalid(where: str, name: str, message: str) -> NoReturn:
    """A 422 shaped like FastAPI's own validation errors, naming the offending field."""
    invalid_fields(where, [f"{name}: {message}"])


def invalid_fields(where: str, errors: list[str]) -> NoReturn:
    """A 422 for several fields at once; each error reads "field: what is wrong"."""
    detail = [
        {"loc": [where, e.partition(":")[0]], "msg": e, "type": "value_error"} for e in errors
    ]
    raise HTTPException(422, detail)


def version_etag(version: int) -> str:
    """The ETag of a versioned resource (the control, a thermostat's settings)."""
    return f'"{version}"'


def if_match_version(value: str, what: str) -> int:
    """The version an If-Match names: "3", 3 and W/"3"; anything else is a 422 naming the
    header and `what` is versioned."""
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        invalid("header", "If-Match", f'expected a {what} version such as "3", got {value!r}')
    return int(text)
