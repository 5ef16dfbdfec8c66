"""Sending one batch of encoded reports and sorting out the answer; shared by the reporter
thread and `entmon replay`.

- 2xx: stored (new or duplicate).
- 400/413/422: the monitor will never take the report: the batch is bisected so that only the
  bad reports are rejected.
- Another 5xx than 502/503/504 may be the monitor or one report it cannot handle (a poison).
  If the monitor answers a control request meanwhile, the batch is bisected; a lone report that
  gets such an answer `POISON_STRIKES` times (`Strikes`) while the monitor takes other
  requests is given up (`Outcome.poisoned`): the caller sets it aside instead of blocking the
  rank's stream behind it forever.
- Anything else (unreachable, 502/503/504, 401/403/404, 429): not done, retry later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from client.connection import MonitorConnection, Reply, TransportError

REJECTED = (400, 413, 422)  # the monitor will never take this report: do not retry it
AWAY = (502, 503, 504)  # the monitor, or the way to it, is down: no report is to blame
POISON_STRIKES = 3  # refusals of one lone report, with the monitor up, before it is set aside
MAX_TRACKED = 1024  # suspects remembered at most (a flapping monitor must not grow this)


@dataclass
class Outcome:
    done: bool  # False: nothing is settled, send the whole batch again later (idempotent)
    replies: list[Reply] = field(default_factory=list)  # 2xx answers, oldest first
    rejected: list[tuple[bytes, Reply]] = field(default_factory=list)  # refused for good
    poisoned: list[tuple[bytes, Reply]] = field(default_factory=list)  # 5xx again and again
    failure: Reply | TransportError | None = None  # why not done


class Strikes:
    """How often each report was refused alone with a 5xx while the monitor was up."""

    def __init__(self, limit: int = POISON_STRIKES) -> None:
        self.limit = limit
        self._counts: dict[bytes, int] = {}

    def strike(self, line: bytes) -> bool:
        """Count one more refusal; True once the report has had `limit` of them."""
        key = hashlib.blake2b(line, digest_size=16).digest()
        if key not in self._counts and len(self._counts) >= MAX_TRACKED:
            self._counts.clear()
        count = self._counts.get(key, 0) + 1
        if count >= self.limit:
            self._counts.pop(key, None)
            return True
        self._counts[key] = count
        return False


def deliver(
    conn: MonitorConnection,
    run: str,
    lines: list[bytes],
    *,
    timeout_s: float | None = None,
    strikes: Strikes | None = None,
) -> Outcome:
    """POST the batch. A rejected batch is bisected, so one bad report costs only itself; with
    `strikes`, so is a batch the monitor answers 500 while it answers other requests."""
    return _deliver(conn, run, lines, timeout_s, strikes, monitor_up=False)


def _deliver(
    conn: MonitorConnection,
    run: str,
    lines: list[bytes],
    timeout_s: float | None,
    strikes: Strikes | None,
    *,
    monitor_up: bool,
) -> Outcome:
    try:
        reply = conn.post_reports(run, lines, timeout_s=timeout_s)
    except TransportError as e:
        return Outcome(False, failure=e)
    if reply.ok:
        return Outcome(True, replies=[reply])
    rejected = reply.status in REJECTED
    suspect = strikes is not None and reply.status >= 500 and reply.status not in AWAY
    if not (rejected or suspect):
        return Outcome(False, failure=reply)
    if suspect and not monitor_up:
        if not _answers(conn, run, timeout_s):  # the monitor itself is failing: wait for it
            return Outcome(False, failure=reply)
        monitor_up = True
    if len(lines) == 1:
        if rejected:
            return Outcome(True, rejected=[(lines[0], reply)])
        assert strikes is not None
        if strikes.strike(lines[0]):
            return Outcome(True, poisoned=[(lines[0], reply)])
        return Outcome(False, failure=reply)
    mid = len(lines) // 2
    first = _deliver(conn, run, lines[:mid], timeout_s, strikes, monitor_up=monitor_up)
    if not first.done:
        return first
    second = _deliver(conn, run, lines[mid:], timeout_s, strikes, monitor_up=monitor_up)
    return Outcome(
        second.done,
        first.replies + second.replies,
        first.rejected + second.rejected,
        first.poisoned + second.poisoned,
        second.failure,
    )


def _answers(conn: MonitorConnection, run: str, timeout_s: float | None) -> bool:
    """Whether the monitor serves another request (a read of the run's control) right now."""
    try:
        return conn.get_control(run, timeout_s=timeout_s).status < 500
    except TransportError:
        return False
