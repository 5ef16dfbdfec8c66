"""The thermostat in the service: one decision per completed merged step, made by a background
task of each service process after ingest (off the response's path), committed exactly once.

The ingest script answers whether the run's thermostat is running; the request then only notes
(run, steps) here. The task decides on each noted step that is complete (Store.complete_step)
and newer than the last decided one: it reads the thermostat, the merged step, the control and
the analysis state, runs the pure law (law.decide) and commits through thermostat_step.lua, which
refuses a step already decided or a thermostat changed since the read (another process won, or a
person overrode it), so a step is decided once however many processes try it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.exceptions import RedisError

from entmon.wire.knobs import control_errors
from monitor.api_models import AuditEntry, Control, ThermostatDecision, ThermostatStatus
from monitor.background import Background
from monitor.store import RunKeys, Store
from monitor.thermostat.law import State, StepInput, acting_value, decide, knob_changes
from monitor.thermostat.record import WHO, Thermostats

log = logging.getLogger(__name__)
COMMIT_TRIES = 3  # a lost compare-and-set reads again: the second read finds the step taken
DECIDE_TIMEOUT_S = 10.0  # one step's decision, at most (a few Redis round trips)
PENDING_RUNS_MAX = 100_000
PENDING_STEPS_MAX = 64  # per run: the newest kept (an older one is superseded anyway)


async def decide_step(thermostats: Thermostats, run: str, step: int) -> ThermostatDecision | None:
    """Decide on `step` of `run` if it is complete and not yet decided; the decision committed
    by this call, or None (nothing to decide, or another process decided it)."""
    store = thermostats.store
    for _ in range(COMMIT_TRIES):
        record = await thermostats.read(run)
        settings = record.settings
        if record.status != "running" or settings is None:
            return None
        if record.last_step is not None and step <= record.last_step:
            return None
        point = await store.complete_step(run, step)
        entropy = point.stats.get("entropy") if point is not None else None
        if point is None or entropy is None:
            return None  # incomplete: the step's last report asks again
        control = await store.control(run)
        analysis_state = await store.redis.hget(RunKeys.of(run).gauges, "state")
        knobs = control.knobs()
        cov = point.stats.get("cov_mean")
        step_input = StepInput(
            step=step,
            entropy=float(entropy),
            knob_value=acting_value(settings.knob, settings.lower, knobs),
            ran_latest=point.control_version == control.version,
            exploding=analysis_state == "exploding",
            non_finite=any(
                isinstance(v, float) and not math.isfinite(v) for v in point.stats.values()
            ),
            cov_mean=float(cov) if cov is not None else None,
        )
        d = decide(settings, record.state or State(), step_input)
        now = time.time()
        change: tuple[Control, AuditEntry] | None = None
        if d.value is not None:
            new_knobs = knobs | knob_changes(settings.knob, knobs, d.value)
            errors = control_errors(new_knobs)
            if errors:  # settings are checked against the knob table when put: not expected
                log.error("thermostat of %r: not written: %s", run, "; ".join(errors))
            else:
                new = Control.model_construct(**new_knobs, version=control.version + 1)
                why = f"{d.reason} (step {step})"
                entry = AuditEntry(
                    version=new.version, who=WHO, when=now, reason=why, old=control, new=new
                )
                change = (new, entry)
        paused = d.state.mode == "paused"
        status: ThermostatStatus = "paused_by_fault" if paused else "running"
        decision = ThermostatDecision(
            step=step,
            when=now,
            action=d.action,
            reason=d.reason,
            value=d.value if change is not None else None,
            control_version=change[0].version if change is not None else None,
            target=d.target,
            error=d.error,
        )
        reason = d.state.reason if paused else ""
        done = await thermostats.commit(
            run, record, step, d.state, status, reason, decision, change
        )
        if done == 1:
            return decision
    return None


class ThermostatWorker(Background):
    """Background task of one process: decides the noted steps, one run at a time, each
    decision bounded by DECIDE_TIMEOUT_S; an error is logged, never raised into a request."""

    name = "entmon-thermostat"

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.thermostats = Thermostats(store)
        self._pending: dict[str, set[int]] = {}  # insertion order: oldest first
        self._wake = asyncio.Event()

    def note(self, run: str, steps: set[int]) -> None:
        pending = self._pending.get(run)
        if pending is None:
            if len(self._pending) >= PENDING_RUNS_MAX:
                return
            pending = self._pending[run] = set()
        pending |= steps
        if len(pending) > PENDING_STEPS_MAX:
            self._pending[run] = set(sorted(pending)[-PENDING_STEPS_MAX:])
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                run = next(iter(self._pending))
                steps = self._pending.pop(run)
                for step in sorted(steps):
                    await self._decide(run, step)

    async def _decide(self, run: str, step: int) -> None:
        try:
            await asyncio.wait_for(decide_step(self.thermostats, run, step), DECIDE_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as e:  # Redis away: a later step decides
            log.warning("thermostat of %r: step %d not decided: %s", run, step, type(e).__name__)
        except Exception:  # never let one run stop the task
            log.exception("thermostat of %r: step %d not decided", run, step)
