"""Who a report comes from: the run-id pattern and the driver rank."""

from __future__ import annotations

# A run id names Redis keys, URL paths and Prometheus labels. No leading dot: ids made only of
# dots ("." "..") would be read as path segments and misroute.
RUN_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"

# The rank of a driver's report: a process that trains nothing and reports whole-step values
# (verl's trainer: the rollout's entropy, reward, response length). It is no training rank: not
# counted in a step's `ranks` nor listed among them; its statistics are the step's.
DRIVER_RANK = -1
