"""One realistic step report, shared by the benchmarks: about 30 scalars, two histograms of
64 and 67 buckets, 8 top tokens."""

from __future__ import annotations

import random
from typing import Any

from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count

STATS = {
    "entropy": 0.61, "logp_mean": -0.42, "adv_mean": 0.0, "adv_std": 0.98, "cov_mean": 0.0021,
    "cov_std": 0.11, "cov_max": 4.2, "cov_top_concentration": 1650.0, "tokens": 65536,
    "candidates": 210, "detached": 13, "penalised": 0, "abs_log_ratio_mean": 0.012,
    "penalised_abs_log_ratio_mean": 0.0, "ppo_clip_frac": 0.004, "policy_loss": -0.013,
    "reward": 0.71, "response_length": 512.0, "client_drops": 0,
}  # fmt: skip
USER = {f"user_{i}": 0.1 * i for i in range(11)}


def realistic_report(step: int, rank: int = 0, *, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed + step)
    return {
        "step": step,
        "rank": rank,
        "world_size": 8,
        "time": 1.7e9 + step % 1_000_000,  # a plausible unix time for any step
        "control_version": 3,
        "stats": dict(STATS),
        "user": dict(USER),
        "histograms": {
            "entropy": {
                "layout": ENTROPY_LAYOUT,
                "counts": [rng.randrange(2000) for _ in range(bucket_count(ENTROPY_LAYOUT))],
            },
            "covariance": {
                "layout": COVARIANCE_LAYOUT,
                "counts": [rng.randrange(2000) for _ in range(bucket_count(COVARIANCE_LAYOUT))],
            },
        },
        "top_tokens": [
            {
                "cov": 5.0 - i * 0.3,
                "logp": -0.05 * i,
                "advantage": 1.3,
                "entropy": 0.2,
                "token_id": 1000 + i,
                "position": 17 * i,
                "text": f" tok{i}",
            }
            for i in range(8)
        ],
    }
