"""A thin client of the monitor API: plain functions that pages and tests call directly."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from entmon.wire.numbers import from_wire

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 5.0
MAX_POINTS = (
    1500  # series are downsampled by the API: a 100k-step run charts as fast as a short one
)


class ApiError(Exception):
    """The monitor answered an error (message says which) or could not be reached."""


def api_url() -> str:
    return os.environ.get("ENTMON_URL", DEFAULT_URL).rstrip("/")


def make_client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S)


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    try:
        response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    except httpx.HTTPError as e:
        raise ApiError(f"cannot reach the monitor at {client.base_url}: {e}") from e
    if response.status_code == 401:
        raise ApiError("the monitor wants a token: set ENTMON_TOKEN or enter one in the sidebar")
    if response.status_code >= 400:
        raise ApiError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def list_runs(client: httpx.Client) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = _get(client, "/v1/runs")["runs"]
    return runs


def get_steps(
    client: httpx.Client,
    run: str,
    *,
    start: int | None = None,
    end: int | None = None,
    max_points: int = MAX_POINTS,
    stats: tuple[str, ...] | None = None,
) -> list[dict[str, Any]]:
    path = f"/v1/runs/{run}/steps"
    wanted = ",".join(stats) if stats else None
    body = _get(client, path, start=start, end=end, max_points=max_points, stats=wanted)
    steps: list[dict[str, Any]] = body["steps"]
    return steps


def get_run(client: httpx.Client, run: str) -> dict[str, Any]:
    summary: dict[str, Any] = _get(client, f"/v1/runs/{run}")
    return summary


def get_histograms(
    client: httpx.Client, run: str, name: str, *, max_points: int = 300
) -> dict[str, Any]:
    series: dict[str, Any] = _get(
        client, f"/v1/runs/{run}/histograms", name=name, max_points=max_points
    )
    return series


def get_top_tokens(client: httpx.Client, run: str) -> list[dict[str, Any]]:
    tokens: list[dict[str, Any]] = _get(client, f"/v1/runs/{run}/top_tokens")["tokens"]
    return tokens


def get_audit(client: httpx.Client, run: str, *, limit: int = 50) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _get(client, f"/v1/runs/{run}/audit", limit=limit)["entries"]
    return entries


def get_control(client: httpx.Client, run: str) -> dict[str, Any]:
    control: dict[str, Any] = _get(client, f"/v1/runs/{run}/control")
    return control


@dataclass(frozen=True)
class ControlResult:
    """What a PUT of the control gave: the new control, or (on 412) the one that won."""

    applied: bool
    control: dict[str, Any]
    last_change: dict[str, Any] | None = None


def put_control(
    client: httpx.Client, run: str, *, version: int, knobs: dict[str, Any], reason: str
) -> ControlResult:
    """Apply knobs with optimistic concurrency: `version` is the one the user was looking at."""
    response = _put_if_match(
        client, f"/v1/runs/{run}/control", {**knobs, "reason": reason}, version, "control"
    )
    if response.status_code == 412:
        body = response.json()
        return ControlResult(False, body["current"], body.get("last_change"))
    return ControlResult(True, response.json())


def _put_if_match(
    client: httpx.Client, path: str, body: dict[str, Any], version: int, what: str
) -> httpx.Response:
    """PUT with If-Match; the response when it applied or answered 412 (stale version), an
    ApiError naming the problem otherwise."""
    try:
        response = client.put(path, json=body, headers={"If-Match": f'"{version}"'})
    except httpx.HTTPError as e:
        raise ApiError(f"cannot reach the monitor: {e}") from e
    if response.status_code == 403:
        raise ApiError(f"changing the {what} needs an admin token")
    if response.status_code == 422:
        detail = response.json().get("detail", [])
        problems = [e.get("msg", str(e)) for e in detail] if isinstance(detail, list) else [detail]
        raise ApiError(f"invalid {what}: " + "; ".join(map(str, problems)))
    if response.status_code >= 400 and response.status_code != 412:
        raise ApiError(f"PUT {what} answered {response.status_code}: {response.text[:300]}")
    return response


def get_thermostat(client: httpx.Client, run: str) -> dict[str, Any]:
    """Settings and live state; `version` is what a PUT sends back as If-Match."""
    thermostat: dict[str, Any] = _get(client, f"/v1/runs/{run}/thermostat")
    return thermostat


@dataclass(frozen=True)
class ThermostatResult:
    """What a PUT of the thermostat gave: its new state, or (on 412) the one that won."""

    applied: bool
    thermostat: dict[str, Any]


def put_thermostat(
    client: httpx.Client,
    run: str,
    *,
    version: int,
    enabled: bool,
    settings: dict[str, Any] | None,
    reason: str,
) -> ThermostatResult:
    """Enable, disable or tune the thermostat, with If-Match as for the control."""
    body = {"enabled": enabled, "settings": settings, "reason": reason}
    response = _put_if_match(client, f"/v1/runs/{run}/thermostat", body, version, "thermostat")
    if response.status_code == 412:
        return ThermostatResult(False, response.json()["current"])
    return ThermostatResult(True, response.json())


def get_analysis(client: httpx.Client, run: str) -> dict[str, Any] | None:
    """The run's entropy analytics, or None where the service has none."""
    try:
        analysis: dict[str, Any] = _get(client, f"/v1/runs/{run}/analysis")
    except ApiError:
        return None
    return analysis


def number(value: Any) -> float | None:
    """A statistic from the API as a float: None stays None, "NaN"/"Infinity" become floats."""
    return None if value is None else float(from_wire(value))


def series(steps: Sequence[Mapping[str, Any]], stat: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one statistic, skipping steps that did not report it."""
    xs, ys = [], []
    for point in steps:
        value = point["stats"].get(stat)
        if value is not None:
            xs.append(point["step"])
            ys.append(float(value))
    return xs, ys
