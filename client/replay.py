"""`entmon replay FILE`: upload a spool by hand, in order, and delete it once all of it is stored.

Safe to run any number of times: the service stores each (run, rank, step) once. A running
Monitor of the same run and rank holds the file's lock; replay then refuses to touch it. A report
the monitor keeps answering 500 while it takes the others is set aside in the dead-letter file
beside the spool (client/delivery.py), so one poison line cannot hold the rest back forever.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from client.connection import MonitorConnection, Reply, TransportError
from client.delivery import Strikes, deliver
from client.reporter import DEFAULT_RETRY_BASE_S, REPLAY_BATCH_BYTES, REPLAY_BATCH_SIZE
from client.spool import Spool, dead_letter_path

DEFAULT_ATTEMPTS = 5


@dataclass
class ReplayResult:
    run: str
    accepted: int = 0  # stored for the first time
    duplicates: int = 0  # already stored (an earlier replay, or the Monitor itself)
    rejected: int = 0  # refused for good by the monitor (invalid, or set aside after 5xx)
    first_rejection: str = ""
    set_aside: int = 0  # of the rejected: answered 5xx again and again, in the dead-letter file
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
    strikes = Strikes()
    try:
        failures = 0
        while spool.pending_bytes:
            lines, end = spool.read(max_reports=REPLAY_BATCH_SIZE, max_bytes=REPLAY_BATCH_BYTES)
            outcome = deliver(conn, spool.run, lines, strikes=strikes)
            if outcome.done:
                if outcome.poisoned:
                    _set_aside(spool, outcome.poisoned, result)  # before the ack: never lost
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


def _set_aside(spool: Spool, poisoned: list[tuple[bytes, Reply]], result: ReplayResult) -> None:
    path = dead_letter_path(spool.path)
    dead = Spool(path, run=spool.run, rank=spool.rank)
    try:
        dead.append([line for line, _ in poisoned])
    finally:
        dead.close()
    result.set_aside += len(poisoned)
    result.rejected += len(poisoned)
    if not result.first_rejection:
        line, reply = poisoned[0]
        result.first_rejection = (
            f"step {_step(line)}: {reply.status} {reply.detail(200)} again and again while the "
            f"monitor took other reports; set aside in {path}"
        )


def _count(result: ReplayResult, replies: list[Reply], rejected: list[tuple[bytes, Reply]]) -> None:
    for reply in replies:
        with contextlib.suppress(ValueError, TypeError, AttributeError):  # stored, odd answer
            body = reply.json()
            result.accepted += int(body.get("accepted", 0))
            result.duplicates += int(body.get("duplicates", 0))
    result.rejected += len(rejected)
    if rejected and not result.first_rejection:
        line, reply = rejected[0]
        result.first_rejection = f"step {_step(line)}: {reply.status} {reply.detail(300)}"


def _step(line: bytes) -> object:
    try:
        return json.loads(line).get("step")
    except (ValueError, AttributeError):
        return "?"


def _describe(failure: Reply | TransportError | None) -> str:
    if isinstance(failure, Reply):
        return f"monitor answered {failure.status} {failure.detail(200)}"
    return f"monitor unreachable: {failure}"
