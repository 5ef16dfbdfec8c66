"""entmon training-side client: statistics, Clip-Cov / KL-Cov, and a reporter that never blocks.

The names below are the public API (the README's); everything else lives in modules that may
change. Bring-your-own-loop users call the pure functions; everyone else calls `Monitor`.
"""

from __future__ import annotations

from client.control import Control
from client.covariance import token_covariance
from client.entropy import token_entropy
from client.errors import ControlError, EntmonError
from client.histograms import bucket_counts
from client.losses import (
    LossStats,
    clip_cov_loss,
    kl_cov_loss,
    policy_loss,
    select_tokens,
    vanilla_ppo_loss,
)
from client.monitor import Monitor
from client.reporter import ReporterConfig
from client.spool import SpoolError
from client.stats import StepAccumulator
from entmon.wire.ids import DRIVER_RANK

__all__ = [
    "DRIVER_RANK",
    "Control",
    "ControlError",
    "EntmonError",
    "LossStats",
    "Monitor",
    "ReporterConfig",
    "SpoolError",
    "StepAccumulator",
    "bucket_counts",
    "clip_cov_loss",
    "kl_cov_loss",
    "policy_loss",
    "select_tokens",
    "token_covariance",
    "token_entropy",
    "vanilla_ppo_loss",
]
