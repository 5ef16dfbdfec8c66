"""Client logging: each kind of problem once, on rank 0 only, so a dead monitor does not flood
the training log of every rank."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("client")


class LogOnce:
    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._seen: set[str] = set()
        self._last: dict[str, float] = {}  # kind -> when at_most_every last logged it loud

    def __call__(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        if self.enabled and kind not in self._seen:
            self._seen.add(kind)  # two threads may race here: at worst a message shows twice
            log.log(level, "entmon: %s", message)

    def at_most_every(self, kind: str, interval_s: float, message: str, level: int) -> None:
        """A message that recurs by design (a thermostat may change the control every step):
        at `level` at most once per `interval_s` for its kind, at DEBUG in between."""
        if not self.enabled:
            return
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < interval_s:
            level = logging.DEBUG
        else:
            self._last[kind] = now
        log.log(level, "entmon: %s", message)
