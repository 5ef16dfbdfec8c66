"""When to try the monitor again after a failure: exponential back-off with jitter."""

from __future__ import annotations

import random
import time

PROBE_TIMEOUT_S = 2.0  # request timeout while the monitor is failing: a hang costs less


class Backoff:
    """Doubles the wait from `base_s` to `max_s` per failure, jittered (ranks do not come back in
    lockstep), at least a server's Retry-After (itself capped at `max_s`); a success resets it."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0
        self.retry_at = 0.0  # time.monotonic() from which to try again

    def failed(self, retry_after_s: float | None = None) -> None:
        self.failures += 1
        delay = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        delay *= random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        self.retry_at = time.monotonic() + delay

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.retry_at

    def wait_s(self) -> float:
        """How long until the next try is due (0 when it is)."""
        return max(0.0, self.retry_at - time.monotonic())

    def request_timeout(self, limit_s: float) -> float:
        """After a failure, probe with a short timeout: a hung monitor holds the queue less."""
        return min(limit_s, PROBE_TIMEOUT_S) if self.failures else limit_s
