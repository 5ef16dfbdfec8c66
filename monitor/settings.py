"""Service configuration: one pydantic-settings class, environment prefix ENTMON_."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "changethis", "secret", "token", "admin"})
DEFAULT_DATA_DIR = Path.home() / ".entmon"
ONE_MIB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENTMON_", extra="ignore")

    redis_url: str | None = Field(
        None, description="Redis to use; unset starts the embedded redis-server under data_dir"
    )
    redis_cluster: bool = Field(
        False, description="ENTMON_REDIS_URL names one node of a Redis Cluster (any node will do)"
    )
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="embedded Redis append-only files")
    ingest_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated tokens that may write reports and read"
    )
    admin_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated tokens that may also change controls"
    )
    environment: Literal["development", "production"] = "development"
    redis_timeout_s: float = Field(2.0, gt=0, description="socket timeout of Redis commands")
    redis_appendfsync: Literal["always", "everysec"] = Field(
        "everysec",
        description="embedded Redis fsync policy of its append-only file. 'always': the file is "
        "fsynced before Redis replies, so an acknowledged report survives a crash of Redis or of "
        "the machine (unless the disk's own cache lies); it costs an fsync per batch of writes. "
        "'everysec': fsynced once a second in the background, so a crash of the machine (power, "
        "kernel, VM killed) can lose about the last 1 s of acknowledged reports, and up to 2 s "
        "when the disk is slow: Redis then holds its writes to the file back for up to 2 s, and "
        "a crash of the Redis process alone loses those too (otherwise they sit in the OS's "
        "cache and survive it)",
    )
    retention_steps: int = Field(100_000, ge=1, description="steps kept per run")
    stale_after_s: float = Field(
        3600.0, gt=0, description="runs silent this long leave /metrics (they stay queryable)"
    )
    max_body_bytes: int = Field(ONE_MIB, ge=1024)
    max_runs: int = Field(
        10_000,
        ge=1,
        description="runs the service keeps; a report that would create one more is refused "
        "(429) until a run is deleted. Bounds what any ingest token can make the scrape cost",
    )
    embedded_status_file: Path | None = Field(
        None,
        description="set by `entmon serve` for its workers: the embedded Redis supervisor's "
        "status, which /readyz, /healthz and /metrics report",
    )
    redis_restart_attempts: int = Field(
        5,
        ge=1,
        description="failed restarts in a row of the embedded Redis (with back-off) before "
        "/healthz fails, so a liveness probe restarts the service",
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans and metrics through the globally "
        "configured providers. Off by default: looking for providers costs every request about "
        "5% of an ingest's CPU, and /metrics already exposes the service's own metrics",
    )

    @field_validator("ingest_tokens", "admin_tokens", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @model_validator(mode="after")
    def _cluster_needs_a_url(self) -> Settings:
        if self.redis_cluster and self.redis_url is None:
            raise ValueError("ENTMON_REDIS_CLUSTER needs ENTMON_REDIS_URL (a node of the cluster)")
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.environment != "development" and not self.auth_enabled:
            raise ValueError(
                "ENTMON_ENVIRONMENT=production needs tokens: set ENTMON_INGEST_TOKENS and "
                "ENTMON_ADMIN_TOKENS (secrets of at least 16 characters)"
            )
        if self.environment != "development":
            weak = [t for t in self.ingest_tokens + self.admin_tokens if _is_placeholder(t)]
            if weak:
                raise ValueError(
                    "ENTMON_INGEST_TOKENS / ENTMON_ADMIN_TOKENS hold a placeholder or short token; "
                    "set real secrets (at least 16 characters) outside development"
                )
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.ingest_tokens or self.admin_tokens)


def _is_placeholder(token: str) -> bool:
    return token.lower() in PLACEHOLDER_SECRETS or len(token) < 16
