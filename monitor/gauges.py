"""The analysis gauges of /metrics, kept in Redis off the scrape path.

Analysing a run costs tens of milliseconds (it reads and merges a sample of its steps): done for
every active run at every scrape, 200 long runs passed Prometheus's 10 s scrape timeout. So each
run's gauges are stored in its `gauges` hash with the step and control version they describe,
refreshed after ingest by a background task (at most once per run every REFRESH_INTERVAL_S), and
the scrape only reads them. A scrape still analyses a few runs whose gauges are missing or
stale itself (SCRAPE_REFRESH_MAX), so a new run or a control change shows at the next scrape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from monitor.analysis import Analysis, AnalysisParams
from monitor.background import Background
from monitor.run_analysis import run_analysis
from monitor.store import Store

log = logging.getLogger(__name__)
# The scrape analyses each run on its first and last steps plus this many sampled between:
# bounded whatever the run's length (bench/bench_analysis_scrape.py).
SCRAPE_MAX_POINTS = 500
SCRAPE_REFRESH_MAX = 4  # runs a scrape analyses itself (the background task does the others)
REFRESH_INTERVAL_S = 5.0  # least time between two analyses of one run by one process
PENDING_MAX = 100_000  # runs waiting for a refresh that a process remembers


@dataclass(frozen=True)
class AnalysisGauges:
    """What /metrics shows of a run's analysis, and which step and control it describes."""

    step: int
    control_version: int
    ceiling: float | None
    holds: bool | None  # None: not enough data to judge the law
    r2: float | None
    state: str | None
    raised: frozenset[str]
    start_entropy: float | None

    @classmethod
    def of(cls, analysis: Analysis, step: int, control_version: int) -> AnalysisGauges:
        return cls(
            step=step,
            control_version=control_version,
            ceiling=analysis.law.ceiling,
            holds=analysis.law.holds if analysis.law.enough_data else None,
            r2=analysis.law.r2,
            state=analysis.collapse.state,
            raised=frozenset(f.flag for f in analysis.health.flags if f.active),
            start_entropy=analysis.collapse.start_entropy,
        )

    def to_hash(self) -> dict[str, str]:
        """Every field always written (empty: none), so one HSET replaces the whole set."""
        return {
            "step": str(self.step),
            "control_version": str(self.control_version),
            "ceiling": _text(self.ceiling),
            "holds": "" if self.holds is None else str(int(self.holds)),
            "r2": _text(self.r2),
            "state": self.state or "",
            "raised": ",".join(sorted(self.raised)),
            "start_entropy": _text(self.start_entropy),
        }

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> AnalysisGauges | None:
        try:
            return cls(
                step=int(fields["step"]),
                control_version=int(fields["control_version"]),
                ceiling=_number(fields["ceiling"]),
                holds=None if fields["holds"] == "" else fields["holds"] == "1",
                r2=_number(fields["r2"]),
                state=fields["state"] or None,
                raised=frozenset(f for f in fields["raised"].split(",") if f),
                start_entropy=_number(fields["start_entropy"]),
            )
        except (KeyError, ValueError):
            return None  # none yet, or written by another version: analysed again

    def describes(self, step: int | None, control_version: int) -> bool:
        return self.step == step and self.control_version == control_version


def _text(x: float | None) -> str:
    return "" if x is None else repr(x)


def _number(text: str) -> float | None:
    return float(text) if text else None


async def refresh(store: Store, run: str) -> AnalysisGauges | None:
    """Analyse the run now and store its gauges; None when the run is gone."""
    meta = await store.meta(run)
    if "last_step" not in meta:
        return None
    analysis = await run_analysis(store, run, AnalysisParams(), SCRAPE_MAX_POINTS)
    control = await store.control(run)
    gauges = AnalysisGauges.of(analysis, int(meta["last_step"]), control.version)
    await store.write_gauges(run, gauges.to_hash())
    return gauges


class GaugeRefresher(Background):
    """Background task of one process: runs that took reports are analysed again, each at most
    once every REFRESH_INTERVAL_S, one at a time (a busy service spends at most one analysis
    at a time on this, between requests)."""

    name = "entmon-gauge-refresher"

    def __init__(self, store: Store, interval_s: float = REFRESH_INTERVAL_S) -> None:
        super().__init__()
        self.store = store
        self.interval_s = interval_s
        self._pending: dict[str, None] = {}  # insertion order: oldest first
        self._done: dict[str, float] = {}  # run -> when this process last analysed it
        self._wake = asyncio.Event()

    def note(self, run: str) -> None:
        if len(self._pending) < PENDING_MAX:
            self._pending[run] = None
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = await self._refresh_due()
            if self._pending and not self._wake.is_set():
                await asyncio.sleep(wait)  # the earliest run not yet due
                self._wake.set()

    async def _current(self, run: str) -> bool:
        """Whether the stored gauges already describe the run's last step and control (a scrape
        analysed it meanwhile): a second analysis would only repeat the work."""
        (read,) = await self.store.run_reads([run], details=False, ranks=False)
        if read is None:
            return True  # deleted meanwhile: nothing to refresh
        g = AnalysisGauges.from_hash(read.gauges)
        last = int(read.meta["last_step"]) if "last_step" in read.meta else None
        return g is not None and g.describes(last, read.control.version)

    async def _refresh_due(self) -> float:
        """Refresh every pending run that is due; the time until the next one is."""
        next_due = math.inf
        for run in list(self._pending):
            due = self._done.get(run, -math.inf) + self.interval_s - time.monotonic()
            if due > 0:
                next_due = min(next_due, due)
                continue
            del self._pending[run]
            self._done[run] = time.monotonic()
            if len(self._done) > PENDING_MAX:
                self._done.clear()
            try:
                if not await self._current(run):
                    await refresh(self.store, run)
            except (RedisError, OSError) as e:  # Redis away: the next report notes it again
                log.warning("analysis gauges of %r not refreshed: %s", run, type(e).__name__)
            except Exception:  # never let one run stop the task
                log.exception("analysis gauges of %r not refreshed", run)
        return next_due if math.isfinite(next_due) else self.interval_s
