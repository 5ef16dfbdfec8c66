"""A thin client of the monitor API, plain functions that tests call directly."""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 5.0


def api_url() -> str:
    return os.environ.get("ENTMON_URL", DEFAULT_URL).rstrip("/")


def make_client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S)


def list_runs(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/v1/runs")
    response.raise_for_status()
    runs: list[dict[str, Any]] = response.json()["runs"]
    return runs


def get_steps(client: httpx.Client, run: str, *, max_points: int = 2000) -> list[dict[str, Any]]:
    response = client.get(f"/v1/runs/{run}/steps", params={"max_points": max_points})
    response.raise_for_status()
    steps: list[dict[str, Any]] = response.json()["steps"]
    return steps


def series(steps: list[dict[str, Any]], stat: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one statistic, skipping steps that did not report it."""
    xs, ys = [], []
    for point in steps:
        value = point["stats"].get(stat)
        if value is not None:
            xs.append(point["step"])
            ys.append(float(value))  # "NaN" strings from the API become float NaN
    return xs, ys
