"""entmon training-side client: statistics, Clip-Cov / KL-Cov, and a reporter that never blocks."""

from __future__ import annotations

from client.monitor import Monitor

__all__ = ["Monitor"]
