from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from bench.realistic import realistic_report
from tests.conftest import ServerProcess

STEPS = 40


def collapsing_run(run: str, url: str, *, steps: int = STEPS, ranks: int = 2) -> None:
    """A short run with everything a real client sends: entropy falling, reward following the
    law R = -a exp(H) + b, histograms, top tokens, and a control version change halfway."""
    reports = []
    for step in range(steps):
        entropy = 0.1 + 1.5 * math.exp(-step / 10)
        for rank in range(ranks):
            r = realistic_report(step, rank, seed=rank)
            r["world_size"] = ranks
            r["control_version"] = 0 if step < steps // 2 else 1
            r["stats"] |= {"entropy": entropy, "reward": -0.3 * math.exp(entropy) + 1.2,
                           "cov_mean": 0.01 * math.exp(-step / 10)}  # fmt: skip
            reports.append(r)
    for i in range(0, len(reports), 32):
        httpx.post(f"{url}/v1/runs/{run}/reports", json=reports[i : i + 32]).raise_for_status()


@pytest.fixture
def streamed(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """A real server holding a streamed run "alpha"; the dashboard is pointed at it."""
    collapsing_run("alpha", server.url)
    monkeypatch.setenv("ENTMON_URL", server.url)
    yield server
