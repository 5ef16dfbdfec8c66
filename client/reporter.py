"""The background reporter: the training thread only appends to a bounded in-memory queue; one
daemon thread turns reports into JSON and sends them in batches over one keep-alive connection.

When the monitor is unreachable, answers 5xx, or refuses the token, batches go to the disk spool
(client/spool.py) and every later report queues up behind them there, so each rank's reports
reach the monitor in order; the spool is replayed once the monitor answers again. Retries back
off (client/backoff.py). Reports the monitor rejects as invalid are dropped one by one, and a
report it keeps answering 500 while it takes others is set aside in a dead-letter file
(client/delivery.py). Nothing here raises into the training loop: problems are logged once per
kind, on rank 0 only.

Who touches the reporter's state: its own thread, until `close()` runs out of network time.
Then `close()` asks the thread to let go (`_handover`); the thread does at its next checkpoint
(between two reports, never inside a spool write) and ends, and the closing thread, which runs
at the training thread's priority, spools what is left. A reporter thread niced and starved of
CPU by other processes can therefore neither hold `close()` up nor outlive it.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.backoff import Backoff
from client.connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    MonitorConnection,
    Reply,
    TransportError,
)
from client.delivery import Strikes, deliver
from client.drop_ledger import DropLedger
from client.log_once import LogOnce
from client.report import PendingReport, encode, finalize
from client.spool import (
    DEFAULT_SPOOL_MAX_BYTES,
    Spool,
    SpoolError,
    SpoolWriteError,
    dead_letter_path,
)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_INTERVAL_S = 0.05
DEFAULT_POLL_INTERVAL_S = 5.0
DEFAULT_RETRY_BASE_S = 0.5
DEFAULT_RETRY_MAX_S = 30.0
REPLAY_BATCH_SIZE = 512  # the service takes at most 1024 reports per request
REPLAY_BATCH_BYTES = 512 << 10  # and 1 MiB per body by default
SPOOL_FLUSH_S = 0.25  # while the monitor fails, reports go to the spool this often at most
IDLE_TICK_S = 0.25  # how often an idle reporter looks at the clock (close, polls, retries)
CLOSE_NETWORK_SHARE = 0.5  # close(): this share of the timeout for sending, the rest to spool
HUNG_REQUEST_S = 0.5  # close(): a request in flight this long is cut, the rest spooled
CLOSE_POLL_S = 0.05  # close(): how often it looks for a hung request
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
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S  # least time between two requests
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S  # ask for the control when this long idle
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # the whole request, answer included
    retry_base_s: float = DEFAULT_RETRY_BASE_S  # first retry delay; doubles per failure
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    spool: bool = True  # False: a dead monitor costs reports once the queue is full
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES


class Phase(enum.IntEnum):
    """Where the reporter is in its life; it only moves forward."""

    RUNNING = 0  # training goes on: send, spool, retry with back-off
    CLOSING = 1  # close() called: send what is queued, no waiting, before the network deadline
    OFFLINE = 2  # no more network (close's network time is over, or the monitor failed while
    # closing): what is left goes to the spool, or is counted as lost without one


class _HandedOver(Exception):
    """The reporter thread let go of its state: close() finishes the work."""


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
        self._queue: collections.deque[PendingReport] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()  # close() called: wakes every wait of the thread
        self._phase = Phase.RUNNING
        self._phase_lock = threading.Lock()
        self._network_deadline = float("inf")  # close(): no request may end after this
        self._handover = threading.Event()  # close() asks the thread to let go of the state
        self._let_go = threading.Event()  # the thread let go (handed over, or finished)
        self._finished_here = False  # the thread finished everything itself
        self._abandoned = False  # close() stopped waiting: the thread keeps and finishes it
        self._closed = False
        self.forked = False  # this is a forked child's copy: it sends nothing
        self._drops = DropLedger()
        self.delivered = 0  # reports the monitor acknowledged (new or duplicate)
        self.spooled = 0  # reports written to the spool
        self.set_aside = 0  # reports the monitor kept refusing, in the dead-letter file
        # State of whichever thread owns the reporter (see the module's docstring).
        self._held: list[bytes] = []  # encoded reports waiting for a retry (spool off), or for
        # the spool while closing
        self._backoff = Backoff(config.retry_base_s, config.retry_max_s)
        self._strikes = Strikes()
        self._last_exchange = -float("inf")  # ask for the run's control at once
        self._last_post = -float("inf")  # when the last batch of reports was sent
        self._request_since = math.inf  # when the request in flight started (inf: none)
        self._last_park = -math.inf  # when reports last went to the spool
        _live.add(self)
        self._thread = threading.Thread(target=self._main, name="entmon-reporter", daemon=True)
        self._thread.start()

    # -- training thread -----------------------------------------------------------------------
    def submit(self, report: PendingReport) -> None:
        """Enqueue without blocking; a full queue drops the report and counts it."""
        if self._closed:
            return
        if len(self._queue) >= self._config.queue_size:
            self._drops.queue_full()
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
    def dropped(self) -> int:
        """Lost here for good (spool full or off, rejected, set aside); see dropped_total."""
        return self._drops.lost

    @property
    def dropped_total(self) -> int:
        """Every report lost for good, the full queue's included."""
        return self._drops.total

    def close(self, timeout: float) -> None:
        """Send what is queued for the first half of `timeout`, then cut the connection (a hung
        request included), spool the rest and stop the thread: returns within `timeout` even if
        the monitor hangs, with the thread ended."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        deadline = started + max(0.0, timeout)
        self._network_deadline = started + CLOSE_NETWORK_SHARE * max(0.0, timeout)
        self._enter(Phase.CLOSING)
        self._stop.set()
        self._wake.set()
        self._wait_while_sending()
        if self._thread.is_alive():  # sending is over: cut any request, take the state over
            self._enter(Phase.OFFLINE)
            self._handover.set()
            self._conn.abort()
            self._wake.set()
            if not self._let_go.wait(max(0.0, deadline - time.monotonic())):
                with self._phase_lock:
                    self._abandoned = not self._let_go.is_set()
            if self._let_go.is_set() and not self._finished_here:
                self._save_rest(deadline)
                self._finish()
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._log_once("close_timeout", f"close: reporter still busy after {timeout}s")
        _live.discard(self)

    def _wait_while_sending(self) -> None:
        """close(): let the thread send until the network deadline, unless one request hangs
        and there is a spool (then the time is better spent spooling: encoding thousands of
        reports takes a while on a loaded machine; without a spool, cutting would lose them)."""
        while self._thread.is_alive():
            left = self._network_deadline - time.monotonic()
            hung = time.monotonic() - self._request_since > HUNG_REQUEST_S
            if left <= 0 or (hung and self._spool is not None):
                return
            self._thread.join(min(left, CLOSE_POLL_S))

    def _disown(self) -> None:
        """In a forked child: forget the parent's queue and thread; this copy stays silent."""
        self.forked = self._closed = True
        self._queue = collections.deque()
        self._wake = threading.Event()

    # -- reporter thread: the loop -------------------------------------------------------------
    def _main(self) -> None:
        _lower_this_threads_priority()
        try:
            self._resume_spool()
            while not self._done():
                self._checkpoint()
                self._cycle()
        except _HandedOver:
            return
        except Exception as e:  # a bug here must cost reports, never the run
            self._log_once("crash", f"reporter stopped by an internal error: {e!r}", logging.ERROR)
        try:
            self._save_rest(float("inf"))
        except _HandedOver:
            return
        with self._phase_lock:
            if self._handover.is_set() and not self._abandoned:
                self._let_go.set()  # close() finishes: _save_rest left nothing for it
                return
            self._finished_here = True
        self._finish()
        self._let_go.set()

    def _checkpoint(self) -> None:
        """On the reporter thread, between units of work: let go when close() asks."""
        if self._handover.is_set() and threading.get_ident() == self._thread.ident:
            with self._phase_lock:
                if not self._abandoned:
                    self._let_go.set()
                    raise _HandedOver

    def _done(self) -> bool:
        if not self._stop.is_set():
            return False
        if not self._may_send():  # closing, monitor out of reach: _save_rest keeps the rest
            return True
        return not (self._queue or self._held or self._spooling())

    def _cycle(self) -> None:
        self._wait_for_company()
        self._wake.clear()  # before draining: a report appended after this sets it again
        items = self._take(self._batch_limit())
        if items:
            self._route(self._encode(items))
        if self._held and self._may_send():
            if self._deliver(self._held):
                self._held = []
        elif self._spooling() and self._may_send():
            self._replay_some()
        elif self._on_control is not None and self._may_send() and self._poll_due():
            self._poll_control()
        blocked = self._held or not self._queue  # held: the queue waits for the retry
        if blocked and not self._stop.is_set():
            self._wake.wait(self._idle_wait())

    def _wait_for_company(self) -> None:
        """A report logged after a quiet spell goes at once (its answer brings a control change
        back before the next step); quicker steps are batched, one request per flush interval.
        While the monitor fails, reports only go to disk, one append per `SPOOL_FLUSH_S`: a
        wake-up per report cost log() milliseconds (the niced reporter, holding the GIL it
        takes back after each disk sync, waits for a CPU while the training thread waits for it).
        """
        if not 0 < len(self._queue) < self._batch_limit():
            return
        now = time.monotonic()
        if not self._may_send():
            wait = min(self._last_park + SPOOL_FLUSH_S, self._backoff.retry_at) - now
        elif self._spooling() or self._held:
            return  # the monitor is back: replay without waiting
        else:
            wait = self._last_post + self._config.flush_interval_s - now
        if wait > 0:
            self._stop.wait(wait)

    # -- the ordering rule ---------------------------------------------------------------------
    def _route(self, lines: list[bytes]) -> None:
        """Each rank's reports reach the monitor in order: a fresh batch is sent only when
        nothing older waits (no spool left, nothing held); otherwise it waits its turn on disk."""
        if not lines:
            return
        if self._spooling() or not self._may_send() or not self._deliver(lines):
            self._park(lines)

    def _batch_limit(self) -> int:
        # Behind a spool, reports only go to disk: big batches, fewer syncs.
        return REPLAY_BATCH_SIZE if self._spooling() else self._config.batch_size

    def _take(self, limit: int) -> list[PendingReport]:
        # Without a spool, a failing monitor leaves reports in the queue: it is the buffer.
        if self._held:
            return []
        items: list[PendingReport] = []
        while self._queue and len(items) < limit:
            items.append(self._queue.popleft())
        return items

    # -- encoding ------------------------------------------------------------------------------
    def _encode(self, items: list[PendingReport], deadline: float = math.inf) -> list[bytes]:
        """JSON lines for `items` (with `_held` empty). Letting go half-way keeps the encoded
        ones in `_held` and puts the rest back at the head of the queue: nothing is lost; so
        does running past `deadline`."""
        lines: list[bytes] = []
        for i, report in enumerate(items):
            try:
                self._checkpoint()
                if deadline < math.inf and time.monotonic() > deadline:
                    self._queue.extendleft(reversed(items[i:]))
                    return lines
            except _HandedOver:
                self._held = lines
                self._queue.extendleft(reversed(items[i:]))
                raise
            drops = self._drops.take_for_next_report()
            problems: list[str] = []
            try:
                done = finalize(
                    report, client_drops=drops, tokenizer=self._tokenizer, problems=problems
                )
                lines.append(encode(done))
                self._yield_gil()
            except Exception as e:
                why = f"step {report.step} not reportable: {e!r}"
                self._drop(1, "encode", why, carried=drops)
            if problems:
                self._log_once(
                    f"scalar:{problems[0].split('=')[0]}",
                    f"log(step={report.step}) left out {'; '.join(problems)}",
                    logging.ERROR,
                )
        return lines

    # -- the spool -----------------------------------------------------------------------------
    def _park(self, lines: list[bytes]) -> None:
        """Keep reports the monitor could not take: on disk, or in memory without a spool."""
        if self._spool is None:
            if self._phase >= Phase.OFFLINE:
                self._drop_lines(lines, "lost", "closing with the monitor unreachable and no spool")
            else:
                self._held = lines
            return
        self._last_park = time.monotonic()
        try:
            fit = self._spool.append(lines)
        except SpoolWriteError as e:
            fit = e.written
            self._log_once("spool_error", f"cannot write the spool: {e}", logging.ERROR)
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
            self._backoff.failed()

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

    def _spooling(self) -> bool:
        return self._spool is not None and self._spool.pending_bytes > 0

    # -- the network ---------------------------------------------------------------------------
    def _deliver(self, lines: list[bytes]) -> bool:
        """True when done with the batch (acknowledged, rejected or set aside for good); False
        to retry it."""
        self._request_since = time.monotonic()
        try:
            outcome = deliver(
                self._conn, self._run_name, lines, timeout_s=self._timeout(), strikes=self._strikes
            )
        finally:
            self._request_since = math.inf
        self._last_post = time.monotonic()
        self._yield_gil()
        for line, reply in outcome.rejected:
            why = f"monitor rejected a report: {reply.status} {reply.detail()}"
            self._drop_lines([line], f"rejected_{reply.status}", why)
        if outcome.poisoned:
            self._set_aside(outcome.poisoned)
        if outcome.done:
            self.delivered += len(lines) - len(outcome.rejected) - len(outcome.poisoned)
        if outcome.replies:
            self._succeeded(outcome.replies[-1])
        failure, url = outcome.failure, self._conn.url
        if isinstance(failure, TransportError):
            self._failed("unreachable", f"cannot reach the monitor at {url}: {failure}")
        elif failure is not None:
            self._failed(str(failure.status), _refusal(failure, url), failure.retry_after_s)
        return outcome.done

    def _set_aside(self, poisoned: list[tuple[bytes, Reply]]) -> None:
        """Reports the monitor answered 5xx again and again while it took others: into the
        dead-letter file beside the spool, counted as dropped (client_drops)."""
        lines = [line for line, _ in poisoned]
        where = "nowhere (no spool)"
        if self._spool is not None:
            path = dead_letter_path(self._spool.path)
            dead = Spool(path, run=self._run_name, rank=self._spool.rank)
            try:
                dead.append(lines)
                where = str(path)
            except (SpoolError, OSError) as e:
                where = f"nowhere ({e})"
            finally:
                dead.close()
        self.set_aside += len(lines)
        line, reply = poisoned[0]
        self._drop_lines(
            lines,
            "set_aside",
            f"the monitor answered {reply.status} ({reply.detail(200)}) to a report "
            f"({line[:80].decode('utf-8', 'replace')}...) again and again while it took others: "
            f"set aside in {where}",
        )

    def _poll_control(self) -> None:
        self._request_since = time.monotonic()
        try:
            reply = self._conn.get_control(self._run_name, timeout_s=self._timeout())
        except TransportError as e:
            self._last_exchange = time.monotonic()  # no faster than the poll interval
            self._log_once("unreachable", f"cannot reach the monitor at {self._conn.url}: {e}")
            return
        finally:
            self._request_since = math.inf
        self._last_exchange = time.monotonic()
        if reply.ok:
            self._control_from(reply, whole_body=True)

    def _succeeded(self, reply: Reply) -> None:
        self._backoff.succeeded()
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
        if self._phase >= Phase.CLOSING:  # closing: one try only, then the spool
            self._enter(Phase.OFFLINE)
        self._backoff.failed(retry_after_s)

    def _may_send(self) -> bool:
        if self._phase == Phase.RUNNING:
            return self._backoff.ready()
        return self._phase == Phase.CLOSING and self._time_left() > 0.05

    def _poll_due(self) -> bool:
        return time.monotonic() - self._last_exchange >= self._config.poll_interval_s

    def _time_left(self) -> float:
        return self._network_deadline - time.monotonic()

    def _timeout(self) -> float:
        limit = self._backoff.request_timeout(self._config.request_timeout_s)
        return min(limit, max(0.05, self._time_left()))

    def _idle_wait(self) -> float:
        if self._held or self._spooling():
            return min(IDLE_TICK_S, self._backoff.wait_s())
        return IDLE_TICK_S

    def _yield_gil(self) -> None:
        if not self._stop.is_set():  # closing: the training loop is over, finish fast
            time.sleep(GIL_YIELD_S)

    def _enter(self, phase: Phase) -> None:
        with self._phase_lock:
            self._phase = max(self._phase, phase)

    # -- drops ---------------------------------------------------------------------------------
    def _drop_lines(self, lines: list[bytes], kind: str, why: str) -> None:
        self._drops.lose_lines(lines)
        self._log_once(kind, f"{why}: reports dropped (counted as client_drops)", logging.ERROR)

    def _drop(self, n: int, kind: str, why: str, *, carried: int = 0) -> None:
        self._drops.lose(n, carried=carried)
        self._log_once(kind, f"{why}: reports dropped (counted as client_drops)", logging.ERROR)

    # -- the end -------------------------------------------------------------------------------
    def _save_rest(self, deadline: float) -> None:
        """Whatever was not sent goes to the spool (or is counted as lost), on the thread that
        owns the state. Past `deadline` (close()'s), the rest is counted as lost."""
        self._enter(Phase.OFFLINE)  # from here on, _park never holds in memory
        try:
            while self._held or self._queue:
                if not self._held:
                    self._held = self._encode(self._take(REPLAY_BATCH_SIZE), deadline)
                    self._checkpoint()
                lines, self._held = self._held, []
                self._park(lines)
                if time.monotonic() > deadline and self._queue:
                    left = len(self._queue)
                    why = f"close: out of time to spool the last {left} reports"
                    self._drop(left, "close_late", why)
                    self._queue.clear()
        except _HandedOver:
            raise
        except Exception as e:
            self._log_once("crash", f"reporter could not save its queue: {e!r}", logging.ERROR)

    def _finish(self) -> None:
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
    thread when both want it: it only has to keep up, never to be quick. (Closing does not
    depend on it: close() takes the remaining work over on its own thread.)"""
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
