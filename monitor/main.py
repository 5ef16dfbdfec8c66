"""Builds the FastAPI app. The lifespan owns the Redis pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from entmon.wire.numbers import to_wire
from monitor.gauges import GaugeRefresher
from monitor.metrics import REPORTS_REJECTED
from monitor.middleware import LimitsAndTiming
from monitor.routers import (
    analysis,
    control,
    docs,
    health,
    metrics,
    reports,
    runs,
    thermostat,
)
from monitor.settings import Settings
from monitor.store import Store
from monitor.thermostat.worker import ThermostatWorker

log = logging.getLogger("monitor")
RETRY_AFTER_S = 5
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _publish_report_schemas(app: FastAPI) -> None:
    """The ingest route decodes its body itself (msgspec, monitor/report_codec.py); put the
    structs its schema refers to into the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            reports.REPORT_BODY_DEFS
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _writable(value: Any, depth: int = 0) -> Any:
    """`value` as strict JSON can hold it: non-finite floats as "NaN" / "Infinity" strings,
    lone surrogates escaped, nesting cut at 32 levels (it only echoes the client's input)."""
    if isinstance(value, float):
        return to_wire(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes):  # a body FastAPI could not read as JSON
        return value.decode("utf-8", "backslashreplace")
    if depth >= 32 and isinstance(value, dict | list):
        return "..."
    if isinstance(value, dict):
        return {_writable(k, depth): _writable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_writable(v, depth + 1) for v in value]
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.redis_url
        if url is None:  # `entmon serve` starts the embedded Redis and sets the URL
            raise RuntimeError(
                "ENTMON_REDIS_URL is unset: run `entmon serve` (it starts an embedded Redis) "
                "or point ENTMON_REDIS_URL at a Redis"
            )
        if not settings.auth_enabled:
            log.warning(
                "NO TOKENS CONFIGURED: open access, anyone who reaches this port may write reports "
                "and change controls. Set ENTMON_INGEST_TOKENS / ENTMON_ADMIN_TOKENS."
            )
        t = settings.redis_timeout_s
        redis: Redis | RedisCluster
        if settings.redis_cluster:  # slots are discovered from this node; keys route by slot
            redis = RedisCluster.from_url(
                url, socket_timeout=t, socket_connect_timeout=t, decode_responses=True
            )
        else:
            redis = Redis.from_url(
                url,
                socket_timeout=t,
                socket_connect_timeout=t,
                health_check_interval=30,
                decode_responses=True,
                # A pooled connection to a Redis that restarted (the supervised embedded one)
                # fails on its first use: try once more on a fresh connection, not a 503.
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
        app.state.settings = settings
        app.state.store = Store(
            redis, retention_steps=settings.retention_steps, max_runs=settings.max_runs
        )
        app.state.gauges = GaugeRefresher(app.state.store)
        app.state.gauges.start()
        app.state.thermostat = ThermostatWorker(app.state.store)
        app.state.thermostat.start()
        try:
            yield
        finally:
            await app.state.thermostat.stop()
            await app.state.gauges.stop()
            await redis.aclose()

    app = FastAPI(
        title="entmon",
        version="0.1.0",
        summary="Live entropy monitoring and Clip-Cov / KL-Cov control for RL of language models",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
        docs_url=None,  # served from local assets by routers/docs.py
        redoc_url=None,  # ReDoc has no packaged build to serve offline
    )
    app.add_middleware(LimitsAndTiming, max_body_bytes=settings.max_body_bytes)
    for router in (
        reports.router,  # first: the hot path is matched before the others
        health.router,
        metrics.router,
        runs.router,
        control.router,
        thermostat.router,
        analysis.router,
    ):
        app.include_router(router)
    docs.mount(app)
    _publish_report_schemas(app)

    @app.exception_handler(RedisError)
    async def redis_unavailable(request: Request, exc: RedisError) -> Response:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return JSONResponse(
            {"detail": "storage unavailable, retry later (the client spools meanwhile)"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.endswith("/reports"):
            REPORTS_REJECTED.labels("invalid").inc()
        # FastAPI's answer quotes the bad input: a NaN or a lone surrogate in it made the
        # 422 itself fail (500). Written out as strict JSON instead.
        detail = jsonable_encoder(_writable(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=422)

    return app
