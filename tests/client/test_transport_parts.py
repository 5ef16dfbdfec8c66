"""The reporter's parts on their own: back-off, drop ledger, poison strikes, dead-letter path,
the pending report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from client.backoff import PROBE_TIMEOUT_S, Backoff
from client.delivery import POISON_STRIKES, Strikes
from client.drop_ledger import DropLedger
from client.report import PendingReport, build_report, finalize
from client.spool import dead_letter_path, spool_path


def test_backoff_doubles_with_jitter_up_to_its_cap_honours_retry_after_and_resets() -> None:
    backoff = Backoff(base_s=1.0, max_s=4.0)
    assert backoff.ready() and backoff.request_timeout(5.0) == 5.0
    waits = []
    for _ in range(4):
        before = time.monotonic()
        backoff.failed()
        waits.append(backoff.retry_at - before)
    for wait, full in zip(waits, [1.0, 2.0, 4.0, 4.0], strict=True):
        assert full * 0.5 <= wait <= full + 0.01  # jittered down to half, never above
    assert not backoff.ready() and backoff.request_timeout(5.0) == PROBE_TIMEOUT_S
    before = time.monotonic()
    backoff.failed(retry_after_s=60.0)  # a server's Retry-After counts, capped at max_s
    assert 4.0 <= backoff.retry_at - before <= 4.01
    backoff.succeeded()
    assert backoff.ready() and backoff.failures == 0 and backoff.wait_s() == 0.0


def test_the_drop_ledger_hands_each_drop_to_exactly_one_report() -> None:
    ledger = DropLedger()
    ledger.queue_full()
    ledger.queue_full()
    ledger.lose(1)
    assert ledger.total == 3 and ledger.lost == 1
    assert ledger.take_for_next_report() == 3
    assert ledger.take_for_next_report() == 0  # carried once
    carrying = json.dumps({"step": 7, "stats": {"client_drops": 5}}).encode()
    ledger.lose_lines([carrying])  # lost with the 5 drops it was to report
    assert ledger.take_for_next_report() == 6 and ledger.total == 4


def test_a_report_is_poison_only_after_its_strikes() -> None:
    strikes = Strikes()
    line = b'{"step":1}'
    assert [strikes.strike(line) for _ in range(POISON_STRIKES)] == [False] * (
        POISON_STRIKES - 1
    ) + [True]
    assert not strikes.strike(line)  # counted afresh afterwards
    assert not strikes.strike(b'{"step":2}')


def test_the_dead_letter_file_sits_beside_the_spool(tmp_path: Path) -> None:
    spool = spool_path(tmp_path, "run-1", 3)
    assert dead_letter_path(spool) == tmp_path / "run-1.rank3.dead.jsonl"


def test_a_pending_report_keeps_tensors_detached_until_finalize_reads_them() -> None:
    loss = torch.tensor(0.25, requires_grad=True) * 2
    pending = build_report(4, 1, 2, 7, {"policy_loss": loss, "lr": 1e-6})
    assert isinstance(pending, PendingReport)
    assert not pending.scalars["policy_loss"].requires_grad  # no graph kept alive in the queue
    done = finalize(pending, client_drops=2)
    assert (done["step"], done["rank"], done["control_version"]) == (4, 1, 7)
    assert done["stats"] == {"policy_loss": 0.5, "client_drops": 2}
    assert done["user"] == {"lr": 1e-6}
