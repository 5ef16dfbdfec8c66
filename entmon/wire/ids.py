"""Who a report comes from: the run-id pattern and the driver rank."""

from __future__ import annotations

# A run id names Redis keys, URL paths and Prometheus labels.
RUN_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"

# The rank of a driver's report: a process that trains nothing and reports whole-step values
# (verl's trainer: the rollout's entropy, reward, response length). It is no training rank: not
# counted in a step's `ranks` nor listed among them; its statistics are the step's.
DRIVER_RANK = -1
