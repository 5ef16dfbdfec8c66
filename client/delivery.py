"""Sending one batch of encoded reports and sorting out the answer; shared by the reporter
thread and `entmon replay`."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.connection import MonitorConnection, Reply, TransportError

REJECTED = (400, 413, 422)  # the monitor will never take this report: do not retry it


@dataclass
class Outcome:
    done: bool  # False: nothing is settled, send the whole batch again later (idempotent)
    replies: list[Reply] = field(default_factory=list)  # 2xx answers, oldest first
    rejected: list[tuple[bytes, Reply]] = field(default_factory=list)  # refused for good
    failure: Reply | TransportError | None = None  # why not done


def deliver(
    conn: MonitorConnection, run: str, lines: list[bytes], *, timeout_s: float | None = None
) -> Outcome:
    """POST the batch. A rejected batch is bisected, so one bad report costs only itself."""
    try:
        reply = conn.post_reports(run, lines, timeout_s=timeout_s)
    except TransportError as e:
        return Outcome(False, failure=e)
    if reply.ok:
        return Outcome(True, replies=[reply])
    if reply.status not in REJECTED:
        return Outcome(False, failure=reply)
    if len(lines) == 1:
        return Outcome(True, rejected=[(lines[0], reply)])
    mid = len(lines) // 2
    first = deliver(conn, run, lines[:mid], timeout_s=timeout_s)
    if not first.done:
        return first
    second = deliver(conn, run, lines[mid:], timeout_s=timeout_s)
    return Outcome(
        second.done,
        first.replies + second.replies,
        first.rejected + second.rejected,
        second.failure,
    )
