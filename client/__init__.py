"""entmon training-side client: statistics, Clip-Cov / KL-Cov, and a reporter that never blocks."""

from __future__ import annotations

from client.batch import Batch, masked_batch
from client.control import Control
from client.covariance import Centred, Scope, centred, token_covariance
from client.entropy import token_entropy
from client.errors import ControlError, EntmonError
from client.histograms import bucket_counts, bucket_indices, histogram_wire
from client.losses import (
    LossStats,
    clip_cov_loss,
    kl_cov_loss,
    policy_loss,
    policy_token_losses,
    select_tokens,
    vanilla_ppo_loss,
)
from client.monitor import Monitor
from client.replay import ReplayResult, replay_file
from client.report import DRIVER_RANK
from client.reporter import ReporterConfig
from client.selection import Selection
from client.spool import SpoolError
from client.stats import PackedStep, StepAccumulator, WorkBuffers

__all__ = [
    "DRIVER_RANK",
    "Batch",
    "Centred",
    "Control",
    "ControlError",
    "EntmonError",
    "LossStats",
    "Monitor",
    "PackedStep",
    "ReplayResult",
    "ReporterConfig",
    "Scope",
    "Selection",
    "SpoolError",
    "StepAccumulator",
    "WorkBuffers",
    "bucket_counts",
    "bucket_indices",
    "centred",
    "clip_cov_loss",
    "histogram_wire",
    "kl_cov_loss",
    "masked_batch",
    "policy_loss",
    "policy_token_losses",
    "replay_file",
    "select_tokens",
    "token_covariance",
    "token_entropy",
    "vanilla_ppo_loss",
]
