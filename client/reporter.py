"""The background reporter: the training thread only appends to a bounded in-memory queue; one
daemon thread turns reports into JSON and sends them in batches over one keep-alive connection.

When the monitor is unreachable, answers 5xx, or refuses the token, batches go to the disk spool
(client/spool.py) and every later report queues up behind them there, so each rank's reports
reach the monitor in order; the spool is replayed once the monitor answers again. Retries back
off exponentially with jitter (and honour Retry-After). Reports the monitor rejects as invalid
are dropped one by one (a batch is bisected to find them). Nothing here raises into the training
loop: problems are logged once per kind, on rank 0 only.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    MonitorConnection,
    Reply,
    TransportError,
)
from client.delivery import deliver
from client.log_once import LogOnce
from client.report import encode, finalize
from client.spool import DEFAULT_SPOOL_MAX_BYTES, Spool, SpoolError

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_INTERVAL_S = 0.25
DEFAULT_POLL_INTERVAL_S = 5.0
DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_MAX_S = 30.0
REPLAY_BATCH_SIZE = 512  # the service takes at most 1024 reports per request
REPLAY_BATCH_BYTES = 512 << 10  # and 1 MiB per body by default
IDLE_TICK_S = 0.25  # how often an idle reporter looks at the clock (close, polls, retries)
PROBE_TIMEOUT_S = 2.0  # request timeout while the monitor is failing: a hang costs less
CLOSE_NETWORK_SHARE = 0.5  # close(): this share of the timeout for sending, the rest to spool
# The reporter sleeps this long after each unit of work (one report encoded, one request), so
# the training thread gets the GIL back within one unit instead of CPython's 5 ms switch
# interval: this keeps log()'s p99 under a millisecond while the reporter is busy.
GIL_YIELD_S = 50e-6
REPORTER_NICE = 10  # on Linux the reporter thread runs this much nicer than the training thread
MAX_NICE = 19


@dataclass(frozen=True, kw_only=True)
class ReporterConfig:
    """Tuning of the transport; the defaults suit a run of any speed."""

    queue_size: int = DEFAULT_QUEUE_SIZE  # reports held in memory before log() drops
    batch_size: int = DEFAULT_BATCH_SIZE  # reports per request in normal operation
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S  # a report waits this long for company
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S  # ask for the control when this long idle
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    retry_base_s: float = DEFAULT_RETRY_BASE_S  # first retry delay; doubles per failure
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    spool: bool = True  # False: a dead monitor costs reports once the queue is full
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES


_live: weakref.WeakSet[Reporter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child shares no thread, lock or socket with its parent's reporter."""
    for reporter in list(_live):
        reporter._disown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Reporter:
    def __init__(
        self,
        *,
        connection: MonitorConnection,
        run: str,
        spool: Spool | None,
        config: ReporterConfig,
        on_control: Callable[[Any], None] | None = None,
        tokenizer: Any = None,
        log_once: LogOnce | None = None,
    ) -> None:
        self._conn = connection
        self._run_name = run
        self._spool = spool
        self._config = config
        self._on_control = on_control
        self._tokenizer = tokenizer
        self._log_once = log_once or LogOnce(enabled=True)
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._hard_stop = False  # close() ran out of time: no more network
        self._deadline = float("inf")
        self._margin = 0.0  # close() keeps this long before the deadline for spooling
        self._closed = False
        self.forked = False  # this is a forked child's copy: it sends nothing
        # Counters. The training thread writes only _queue_drops; the reporter thread the rest.
        self._queue_drops = 0
        self._queue_drops_seen = 0
        self._drops_to_report = 0
        self.dropped = 0  # lost here for good (spool full or off, rejected); see dropped_total
        self.delivered = 0  # reports the monitor acknowledged (new or duplicate)
        self.spooled = 0  # reports written to the spool
        # Reporter-thread state.
        self._held: list[bytes] = []  # a batch to retry from memory (spool off)
        self._failures = 0
        self._retry_at = 0.0
        self._failed_closing = False
        self._last_exchange = -float("inf")  # ask for the run's control at once
        _live.add(self)
        self._thread = threading.Thread(target=self._main, name="entmon-reporter", daemon=True)
        self._thread.start()

    # -- training thread -----------------------------------------------------------------------
    def submit(self, report: dict[str, Any]) -> None:
        """Enqueue without blocking; a full queue drops the report and counts it."""
        if self._closed:
            return
        if len(self._queue) >= self._config.queue_size:
            self._queue_drops += 1
            self._log_once(
                "queue_full",
                f"{self._config.queue_size} reports queued: dropping reports, the reporter cannot "
                "keep up (monitor hanging or disk too slow)",
            )
            return
        self._queue.append(report)
        if not self._wake.is_set():
            self._wake.set()

    @property
    def dropped_total(self) -> int:
        """Every report lost for good, the full queue's included."""
        return self.dropped + self._queue_drops

    def close(self, timeout: float) -> None:
        """Send what is queued for the first half of `timeout`, then cut the connection (a hung
        request included), spool the rest and stop the thread: returns within `timeout` even if
        the monitor hangs."""
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        self._deadline = now + max(0.0, timeout)
        self._margin = margin = (1.0 - CLOSE_NETWORK_SHARE) * timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, self._deadline - margin - now))
        if self._thread.is_alive():  # a request outlives the deadline: cut it, spool the rest
            self._hard_stop = True
            self._conn.abort()
            self._wake.set()
            self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self._thread.is_alive():
            self._log_once("close_timeout", f"close: reporter still busy after {timeout}s")
        _live.discard(self)

    def _disown(self) -> None:
        """In a forked child: forget the parent's queue and thread; this copy stays silent."""
        self.forked = self._closed = True
        self._queue = collections.deque()
        self._wake = threading.Event()

    # -- reporter thread -----------------------------------------------------------------------
    def _main(self) -> None:
        _lower_this_threads_priority()
        try:
            self._resume_spool()
            while not self._done():
                self._cycle()
        except Exception as e:  # a bug here must cost reports, never the run
            self._log_once("crash", f"reporter stopped by an internal error: {e!r}", logging.ERROR)
        finally:
            self._shutdown()

    def _done(self) -> bool:
        if not self._stop.is_set():
            return False
        if not self._may_send():  # closing, monitor out of reach: _shutdown saves the rest
            return True
        return not (self._queue or self._held or self._spooling())

    def _cycle(self) -> None:
        if 0 < len(self._queue) < self._config.batch_size and not self._spooling():
            self._stop.wait(self._config.flush_interval_s)  # let the batch fill: fewer requests
        self._wake.clear()  # before draining: a report appended after this sets it again
        items = self._take()
        if items:
            self._dispatch(self._encode(items))
        if self._held and self._may_send():
            if self._deliver(self._held):
                self._held = []
        elif self._spool is not None and self._spool.pending_bytes and self._may_send():
            self._replay_some()
        elif self._on_control is not None and self._may_send() and self._poll_due():
            self._poll_control()
        blocked = self._held or not self._queue  # held: the queue waits for the retry
        if blocked and not self._stop.is_set():
            self._wake.wait(self._idle_wait())

    def _take(self) -> list[dict[str, Any]]:
        # Without a spool, a failing monitor leaves reports in the queue: it is the buffer.
        if self._held:
            return []
        limit = REPLAY_BATCH_SIZE if self._spooling() else self._config.batch_size
        items: list[dict[str, Any]] = []
        while self._queue and len(items) < limit:
            items.append(self._queue.popleft())
        return items

    def _encode(self, items: list[dict[str, Any]]) -> list[bytes]:
        lines = []
        for report in items:
            drops = self._pending_drops()
            problems: list[str] = []
            try:
                done = finalize(
                    report, client_drops=drops, tokenizer=self._tokenizer, problems=problems
                )
                lines.append(encode(done))
                self._yield_gil()
            except Exception as e:
                why = f"step {report.get('step')} not reportable: {e!r}"
                self._drop(1, "encode", why, carried=drops)
            if problems:
                self._log_once(
                    f"scalar:{problems[0].split('=')[0]}",
                    f"log(step={report.get('step')}) left out {'; '.join(problems)}",
                    logging.ERROR,
                )
        return lines

    def _pending_drops(self) -> int:
        """Drops since the previous report: carried by the next one (`client_drops`)."""
        queue_drops = self._queue_drops
        drops = queue_drops - self._queue_drops_seen + self._drops_to_report
        self._queue_drops_seen = queue_drops
        self._drops_to_report = 0
        return drops

    def _dispatch(self, lines: list[bytes]) -> None:
        if not lines:
            return
        # Behind a non-empty spool a batch waits its turn on disk: each rank's order holds.
        if self._spooling() or not self._may_send() or not self._deliver(lines):
            self._park(lines)

    def _park(self, lines: list[bytes]) -> None:
        """Keep reports the monitor could not take: on disk, or in memory without a spool."""
        if self._spool is None:
            if self._hard_stop:
                self._drop_lines(lines, "lost", "closing with the monitor unreachable and no spool")
            else:
                self._held = lines
            return
        try:
            fit = self._spool.append(lines)
        except (SpoolError, OSError) as e:
            fit = 0
            self._log_once("spool_error", f"cannot write the spool: {e}", logging.ERROR)
        self.spooled += fit
        if fit < len(lines):
            self._drop_lines(lines[fit:], "spool_full", f"spool {self._spool.path} is full")
        else:
            self._log_once(
                "spooling",
                f"monitor at {self._conn.url} unavailable: spooling reports to "
                f"{self._spool.path}; they are sent in order when it is back",
                logging.WARNING,
            )

    def _replay_some(self) -> None:
        assert self._spool is not None
        try:
            lines, end = self._spool.read(
                max_reports=REPLAY_BATCH_SIZE, max_bytes=REPLAY_BATCH_BYTES
            )
            if not lines or self._deliver(lines):
                self._spool.ack(end)
                if not self._spool.pending_bytes:
                    self._log_once("replayed", "spool replayed: monitor up to date", logging.INFO)
        except (SpoolError, OSError) as e:
            self._log_once("spool_read", f"cannot read the spool: {e}", logging.ERROR)
            self._retry_later(None)

    def _resume_spool(self) -> None:
        """A spool left by an earlier process of this run and rank goes out first."""
        if self._spool is None or not self._spool.path.exists():
            return
        try:
            self._spool.open(create=False)
        except (SpoolError, OSError) as e:
            self._log_once("spool_error", f"cannot use the spool: {e}", logging.ERROR)
            return
        if self._spool.pending_bytes:
            self._log_once(
                "resume",
                f"sending {self._spool.pending_bytes} bytes of reports left in {self._spool.path}",
                logging.INFO,
            )

    def _deliver(self, lines: list[bytes]) -> bool:
        """True when done with the batch (acknowledged, or rejected for good); False to retry."""
        outcome = deliver(self._conn, self._run_name, lines, timeout_s=self._timeout())
        self._yield_gil()
        for line, reply in outcome.rejected:
            why = f"monitor rejected a report: {reply.status} {reply.detail()}"
            self._drop_lines([line], f"rejected_{reply.status}", why)
        if outcome.done:
            self.delivered += len(lines) - len(outcome.rejected)
        if outcome.replies:
            self._succeeded(outcome.replies[-1])
        failure, url = outcome.failure, self._conn.url
        if isinstance(failure, TransportError):
            self._failed("unreachable", f"cannot reach the monitor at {url}: {failure}")
        elif failure is not None:
            self._failed(str(failure.status), _refusal(failure, url), failure.retry_after_s)
        return outcome.done

    def _poll_control(self) -> None:
        try:
            reply = self._conn.get_control(self._run_name, timeout_s=self._timeout())
        except TransportError as e:
            self._last_exchange = time.monotonic()  # no faster than the poll interval
            self._log_once("unreachable", f"cannot reach the monitor at {self._conn.url}: {e}")
            return
        self._last_exchange = time.monotonic()
        if reply.ok:
            self._control_from(reply, whole_body=True)

    def _succeeded(self, reply: Reply) -> None:
        self._failures = 0
        self._retry_at = 0.0
        self._last_exchange = time.monotonic()
        self._control_from(reply, whole_body=False)

    def _control_from(self, reply: Reply, *, whole_body: bool) -> None:
        if self._on_control is None:
            return
        try:
            body = reply.json()
            self._on_control(body if whole_body else body.get("control"))
        except Exception as e:  # a bad answer must not stop the reporter
            self._log_once("bad_answer", f"unusable answer from the monitor: {e!r}", logging.ERROR)

    def _failed(self, kind: str, message: str, retry_after_s: float | None = None) -> None:
        self._log_once(kind, message)
        self._retry_later(retry_after_s)

    def _retry_later(self, retry_after_s: float | None) -> None:
        cfg = self._config
        self._failed_closing = self._stop.is_set()
        self._failures += 1
        delay = min(cfg.retry_max_s, cfg.retry_base_s * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: ranks do not come back in lockstep
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, cfg.retry_max_s))
        self._retry_at = time.monotonic() + delay

    def _yield_gil(self) -> None:
        if not self._stop.is_set():  # closing: the training loop is over, finish fast
            time.sleep(GIL_YIELD_S)

    def _spooling(self) -> bool:
        return self._spool is not None and self._spool.pending_bytes > 0

    def _may_send(self) -> bool:
        if self._hard_stop:
            return False
        if self._stop.is_set():  # closing: one more try, no waiting, stop before the deadline
            return not self._failed_closing and self._time_left() > 0.05
        return time.monotonic() >= self._retry_at

    def _poll_due(self) -> bool:
        return time.monotonic() - self._last_exchange >= self._config.poll_interval_s

    def _time_left(self) -> float:
        return self._deadline - self._margin - time.monotonic()

    def _timeout(self) -> float:
        limit = self._config.request_timeout_s
        if self._failures:  # after a hang, probe with a shorter timeout: the queue waits less
            limit = min(limit, PROBE_TIMEOUT_S)
        return min(limit, max(0.05, self._time_left()))

    def _idle_wait(self) -> float:
        now = time.monotonic()
        wait = IDLE_TICK_S
        if self._retry_at > now and (self._held or self._spooling()):
            wait = min(wait, self._retry_at - now)
        elif self._held or self._spooling():
            wait = 0.0
        return max(0.0, wait)

    def _drop_lines(self, lines: list[bytes], kind: str, why: str) -> None:
        self._drop(len(lines), kind, why, carried=sum(_carried_drops(line) for line in lines))

    def _drop(self, n: int, kind: str, why: str, *, carried: int = 0) -> None:
        """Count `n` lost reports; `carried` earlier drops they were to report go to the next."""
        self.dropped += n
        self._drops_to_report += n + carried
        self._log_once(kind, f"{why}: reports dropped (counted as client_drops)", logging.ERROR)

    def _shutdown(self) -> None:
        """Whatever is left when the thread ends goes to the spool (or is counted as lost)."""
        self._hard_stop = True  # from here on, _park never holds in memory
        try:
            lines, self._held = self._held, []
            while lines or self._queue:
                self._park(lines + self._encode(self._take()))
                lines = []
        except Exception as e:
            self._log_once("crash", f"reporter could not save its queue: {e!r}", logging.ERROR)
        if self._spool is not None and self._spool.pending_bytes:
            self._log_once(
                "left_in_spool",
                f"{self._spool.pending_bytes} bytes of reports kept in {self._spool.path}: "
                f"they are sent when this run and rank start again, or run "
                f"`entmon replay {self._spool.path}`",
                logging.WARNING,
            )
        if self.dropped_total:
            self._log_once(
                "drop_total",
                f"{self.dropped_total} reports were dropped in this process "
                "(the monitor learns of them as client_drops while it can)",
            )
        if self._spool is not None:
            self._spool.close()
        self._conn.close()


def _lower_this_threads_priority() -> None:
    """Where the OS can renice one thread (Linux), the reporter yields the CPU to the training
    thread when both want it: it only has to keep up, never to be quick."""
    if sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS would renice the whole process
        with contextlib.suppress(OSError, AttributeError):
            tid = threading.get_native_id()
            nice = os.getpriority(os.PRIO_PROCESS, tid) + REPORTER_NICE
            os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, nice))


def _refusal(reply: Reply, url: str) -> str:
    if reply.status in (401, 403):
        return (
            f"monitor at {url} refused the token ({reply.status} {reply.detail(200)}); "
            "set ENTMON_TOKEN or Monitor(token=...); reports are kept meanwhile"
        )
    return f"monitor at {url} answered {reply.status} {reply.detail(200)}"


def _carried_drops(line: bytes) -> int:
    """The client_drops an encoded report carries (lost with it, so counted again)."""
    try:
        return int(json.loads(line).get("stats", {}).get("client_drops", 0))
    except (ValueError, TypeError, AttributeError):
        return 0
