"""Step reports of a synthetic run as the client sends them: every statistic, both histograms on
their fixed layouts, top tokens. The entropy decays exponentially and the reward follows the
entropy-performance law R = -A * exp(H) + B, so the predicted ceiling is B - A."""

from __future__ import annotations

import math
from typing import Any

from entmon.wire.layouts import COVARIANCE_LAYOUT, ENTROPY_LAYOUT, bucket_count, bucket_index

START_ENTROPY = 1.2  # nats
LAW_A, LAW_B = 0.3, 1.0  # ceiling 0.7
TOKENS = 1000  # per rank and step


def entropy_at(step: int, *, half_life: float) -> float:
    return START_ENTROPY * 0.5 ** (step / half_life)


def report(
    step: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    half_life: float = 4.0,
    penalised: int = 2,
    control_version: int | None = None,
    client_drops: int = 0,
) -> dict[str, Any]:
    """One rank's report of `step`; entropy halves every `half_life` steps."""
    h = entropy_at(step, half_life=half_life)
    cov = 0.02 * (1 + step)  # the covariance grows as the policy sharpens
    entropy_counts = [0] * bucket_count(ENTROPY_LAYOUT)
    for spread, n in ((0.5, 250), (1.0, 500), (2.0, 250)):
        entropy_counts[bucket_index(ENTROPY_LAYOUT, h * spread)] += n
    cov_counts = [0] * bucket_count(COVARIANCE_LAYOUT)
    for value, n in ((-cov, 300), (1e-6, 400), (cov, 290), (50 * cov, 10)):
        cov_counts[bucket_index(COVARIANCE_LAYOUT, value)] += n
    return {
        "step": step,
        "rank": rank,
        "world_size": world_size,
        "control_version": control_version,
        "stats": {
            "entropy": h,
            "logp_mean": -h,
            "adv_mean": 0.0,
            "adv_std": 1.0,
            "cov_mean": cov,
            "cov_std": 2 * cov,
            "cov_max": 50 * cov,
            "cov_top_concentration": 40.0,
            "tokens": TOKENS,
            "candidates": 5,
            "detached": 0,
            "penalised": penalised,
            "abs_log_ratio_mean": 0.02,
            "penalised_abs_log_ratio_mean": 0.05,
            "ppo_clip_frac": 0.01,
            "policy_loss": 0.1,
            "reward": -LAW_A * math.exp(h) + LAW_B,
            "response_length": 300.0 + step,
            "sequences": 4,
            "zero_adv_token_share": 0.25,  # one GRPO group of four scored alike
            "zero_adv_sequence_share": 0.25,
            "client_drops": client_drops,
        },
        "user": {"lr": 1e-6},
        "histograms": {
            "entropy": {"layout": ENTROPY_LAYOUT, "counts": entropy_counts},
            "covariance": {"layout": COVARIANCE_LAYOUT, "counts": cov_counts},
        },
        "top_tokens": [
            {"cov": 50 * cov, "logp": -0.1, "advantage": 1.0, "entropy": h, "token_id": 42}
        ],
    }
