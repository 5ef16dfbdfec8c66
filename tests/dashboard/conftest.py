from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.realistic import realistic_report
from entmon.wire.layouts import LENGTH_LAYOUT, bucket_count, bucket_index
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
            r["stats"] |= {"zero_adv_sequence_share": step / steps, "zero_adv_token_share": 0.1}
            r["histograms"] |= group_health(step)
            reports.append(r)
    for i in range(0, len(reports), 32):
        httpx.post(f"{url}/v1/runs/{run}/reports", json=reports[i : i + 32]).raise_for_status()


def group_health(step: int) -> dict[str, Any]:
    """A rank's length histograms: 48 long sequences (growing with the step, 0.5 nats a token)
    and 16 short ones (20 tokens, 2 nats a token)."""
    K = bucket_count(LENGTH_LAYOUT)
    sequences, tokens, sums = [0] * K, [0] * K, [0.0] * K
    for length, n, entropy in ((100 + 10 * step, 48, 0.5), (20, 16, 2.0)):
        i = bucket_index(LENGTH_LAYOUT, length)
        sequences[i] += n
        tokens[i] += n * length
        sums[i] += n * length * entropy
    return {
        "response_length": {"layout": LENGTH_LAYOUT, "counts": sequences},
        "entropy_by_length": {"layout": LENGTH_LAYOUT, "counts": tokens, "sums": sums},
    }


@pytest.fixture
def streamed(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """A real server holding a streamed run "alpha"; the dashboard is pointed at it."""
    collapsing_run("alpha", server.url)
    monkeypatch.setenv("ENTMON_URL", server.url)
    yield server
