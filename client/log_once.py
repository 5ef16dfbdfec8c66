"""Client logging: each kind of problem once, on rank 0 only, so a dead monitor does not flood
the training log of every rank."""

from __future__ import annotations

import logging

log = logging.getLogger("client")


class LogOnce:
    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._seen: set[str] = set()

    def __call__(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        if self.enabled and kind not in self._seen:
            self._seen.add(kind)  # two threads may race here: at worst a message shows twice
            log.log(level, "entmon: %s", message)
