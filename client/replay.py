"""`entmon replay FILE`: upload a spool by hand, in order, and delete it once all of it is stored.

Safe to run any number of times: the service stores each (run, rank, step) once. A running
Monitor of the same run and rank holds the file's lock; replay then refuses to touch it.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from client.connection import MonitorConnection, Reply, TransportError
from client.delivery import deliver
from client.reporter import DEFAULT_RETRY_BASE_S, REPLAY_BATCH_BYTES, REPLAY_BATCH_SIZE
from client.spool import Spool

DEFAULT_ATTEMPTS = 5


@dataclass
class ReplayResult:
    run: str
    accepted: int = 0  # stored for the first time
    duplicates: int = 0  # already stored (an earlier replay, or the Monitor itself)
    rejected: int = 0  # refused for good by the monitor (invalid)
    first_rejection: str = ""
    left: int = 0  # bytes still in the file (the monitor stopped answering)
    failure: str = ""

    @property
    def complete(self) -> bool:
        return self.left == 0


def replay_file(
    path: str | Path,
    *,
    url: str,
    token: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_base_s: float = DEFAULT_RETRY_BASE_S,
) -> ReplayResult:
    """Send every report of the spool file; raises SpoolError when the file is unusable."""
    spool = Spool(path)
    spool.open(create=False)
    assert spool.run is not None  # read from the header
    result = ReplayResult(run=spool.run)
    conn = MonitorConnection(url, token)
    try:
        failures = 0
        while spool.pending_bytes:
            lines, end = spool.read(max_reports=REPLAY_BATCH_SIZE, max_bytes=REPLAY_BATCH_BYTES)
            outcome = deliver(conn, spool.run, lines)
            if outcome.done:
                _count(result, outcome.replies, outcome.rejected)
                spool.ack(end)
                failures = 0
                continue
            failures += 1
            result.failure = _describe(outcome.failure)
            if failures >= attempts:
                break
            time.sleep(retry_base_s * 2 ** (failures - 1) * random.uniform(0.5, 1.0))
        result.left = spool.pending_bytes
    finally:
        spool.close()
        conn.close()
    return result


def _count(result: ReplayResult, replies: list[Reply], rejected: list[tuple[bytes, Reply]]) -> None:
    for reply in replies:
        with contextlib.suppress(ValueError, TypeError, AttributeError):  # stored, odd answer
            body = reply.json()
            result.accepted += int(body.get("accepted", 0))
            result.duplicates += int(body.get("duplicates", 0))
    result.rejected += len(rejected)
    if rejected and not result.first_rejection:
        line, reply = rejected[0]
        try:
            step = json.loads(line).get("step")
        except ValueError:
            step = "?"
        result.first_rejection = f"step {step}: {reply.status} {reply.detail(300)}"


def _describe(failure: Reply | TransportError | None) -> str:
    if isinstance(failure, Reply):
        return f"monitor answered {failure.status} {failure.detail(200)}"
    return f"monitor unreachable: {failure}"
