"""Reports lost for good, counted so the monitor learns of them: the next report that gets
through carries the count as `client_drops`."""

from __future__ import annotations

import json


class DropLedger:
    """`queue_full` runs on the training thread (one integer it alone writes); everything else on
    whichever thread owns the reporter's state."""

    def __init__(self) -> None:
        self._queue_full = 0  # written by the training thread only
        self._queue_full_seen = 0
        self._unreported = 0  # drops no report has carried yet
        self.lost = 0  # lost here (spool full or off, rejected, set aside), queue drops apart

    def queue_full(self) -> None:
        self._queue_full += 1

    @property
    def total(self) -> int:
        return self.lost + self._queue_full

    def lose(self, n: int, *, carried: int = 0) -> None:
        """`n` reports lost; the `carried` earlier drops they were to report go to the next."""
        self.lost += n
        self._unreported += n + carried

    def lose_lines(self, lines: list[bytes]) -> None:
        self.lose(len(lines), carried=sum(carried_drops(line) for line in lines))

    def take_for_next_report(self) -> int:
        """Drops since the previous report: the next report carries them."""
        seen = self._queue_full
        drops = seen - self._queue_full_seen + self._unreported
        self._queue_full_seen = seen
        self._unreported = 0
        return drops


def carried_drops(line: bytes) -> int:
    """The client_drops an encoded report carries (lost with it, so counted again)."""
    try:
        return int(json.loads(line).get("stats", {}).get("client_drops", 0))
    except (ValueError, TypeError, AttributeError):
        return 0
