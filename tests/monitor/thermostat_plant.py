"""A synthetic run whose entropy responds to the thermostat's actuator, driven through a real
service: the closed loop of a trainer that applies the control its last ingest response carried.

The plant: ln H moves each step by GAIN x ln(c / C_HOLD), c the KL-Cov ratio the step ran (when
the loss mode is kl_cov; a floor of C_OFF otherwise): below C_HOLD the entropy falls, above it
rises, like the toy (its measured gain is ~0.015 per step and ln unit of the knob).
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Any

import httpx

KNOB = "kl_cov_ratio"
GAIN = 0.012
C_HOLD = 0.05
C_OFF = 1e-3
DECISION_DEADLINE_S = 60.0


def settings(target: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"target": {"points": [[0, target]]}, "knob": KNOB, **extra}


class Plant:
    """One rank (world size 1) whose entropy follows the knob; posts to `urls` in turn."""

    def __init__(self, urls: list[str], run: str, entropy: float = 1.5) -> None:
        self.urls = urls
        self.run = run
        self.entropy = entropy
        self.control: dict[str, Any] = {"version": 0, "loss_mode": "vanilla", KNOB: 0.0}
        self.step = 0
        self.history: list[tuple[int, float, int]] = []  # step, entropy, control version ran
        self.http = httpx.Client(timeout=30)

    def __enter__(self) -> Plant:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.http.close()

    def acting(self) -> float:
        c = self.control
        return max(c[KNOB], C_OFF) if c["loss_mode"] == "kl_cov" else C_OFF

    def report(self, entropy: float | str | None = None) -> dict[str, Any]:
        h = self.entropy if entropy is None else entropy
        return {
            "step": self.step,
            "rank": 0,
            "world_size": 1,
            "control_version": self.control["version"],
            "stats": {"entropy": h, "tokens": 1000},
        }

    def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(f"{url}/v1/runs/{self.run}/reports", json=body)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def run_step(self, entropy: float | str | None = None, *, wait: bool = True) -> None:
        """Report this step to every url (the same report: one stored, the rest duplicates),
        wait until the thermostat decided it (when running), apply the newest control
        answered, and let the entropy respond to the control the step ran."""
        body = self.report(entropy)
        posted_at = time.time()  # the service's clock too: the same machine
        answers = [self.post(url, body) for url in self.urls]
        self.history.append((self.step, self.entropy, self.control["version"]))
        ran = self.acting()
        if wait:
            wait_decided(self.urls[0], self.run, self.step, self.http, posted_at)
        newest = max((a["control"] for a in answers), key=lambda c: c["version"])
        if newest["version"] > self.control["version"]:
            self.control = newest
        self.entropy *= math.exp(GAIN * math.log(ran / C_HOLD))
        self.step += 1


def thermostat(url: str, run: str, http: httpx.Client | None = None) -> dict[str, Any]:
    r = (http or httpx).get(f"{url}/v1/runs/{run}/thermostat", timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_decided(
    url: str,
    run: str,
    step: int,
    http: httpx.Client | None = None,
    posted_at: float | None = None,
) -> dict[str, Any]:
    """The thermostat once it has decided `step` (or stopped running). A step posted (at
    `posted_at`) before the thermostat was last changed, e.g. enabled by a person while the run
    goes on, may never be decided: the service notes a step only if its thermostat was running
    when the step was ingested, and the next step is decided instead."""
    deadline = time.monotonic() + DECISION_DEADLINE_S
    while True:
        t = thermostat(url, run, http)
        if t["status"] != "running" or (t["last_step"] is not None and t["last_step"] >= step):
            return t
        changed = max((c["when"] for c in t["changes"]), default=None)
        if posted_at is not None and changed is not None and changed > posted_at:
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"step {step} not decided: {t}")
        time.sleep(0.005)


def put_thermostat(
    url: str, run: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    if headers is None:
        version = thermostat(url, run)["version"]
        headers = {"If-Match": f'"{version}"'}
    return httpx.put(f"{url}/v1/runs/{run}/thermostat", json=body, headers=headers, timeout=30)
