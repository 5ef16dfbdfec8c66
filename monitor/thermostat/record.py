"""A run's thermostat in Redis: one hash (settings, law state, status), its decisions and its
audit (monitor/DATA_MODEL.md), and the scripts that change them atomically.

Two counters: `version` counts a person's changes of the settings (the ETag of GET|PUT
.../thermostat); `rev` counts every change (each decision too), and a write computed from a read
commits only if `rev` is unchanged: two service processes deciding the same step cannot both
commit, and a person's override cannot be lost to a decision read before it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from entmon.wire.knobs import KNOB_BY_NAME
from monitor.api_models import (
    AuditEntry,
    Control,
    ThermostatChange,
    ThermostatDecision,
    ThermostatStatus,
)
from monitor.store import AUDIT_CAP, RunKeys, Store
from monitor.thermostat.law import Settings, SettingsError, State, acting_value

log = logging.getLogger(__name__)
_Model = TypeVar("_Model", bound=BaseModel)
T = TypeVar("T")
STEP_SCRIPT = files("monitor").joinpath("thermostat_step.lua").read_text()
SET_SCRIPT = files("monitor").joinpath("thermostat_set.lua").read_text()
DECISIONS_CAP = 1000  # decisions kept per run
WHO = "thermostat"  # the audit's `who` of its control changes


@dataclass(frozen=True)
class Record:
    """The thermostat hash, parsed. An absent hash is a thermostat never set: off."""

    version: int = 0
    rev: int = 0
    enabled: bool = False
    status: ThermostatStatus = "off"
    reason: str = ""
    settings: Settings | None = None
    state: State | None = None
    last_step: int | None = None
    target: float | None = None
    error: float | None = None

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Record:
        if not h:
            return cls()
        return cls(
            version=int(h.get("version", 0)),
            rev=int(h.get("rev", 0)),
            enabled=h.get("enabled") == "1",
            status=cast(ThermostatStatus, h.get("status", "off")),
            reason=h.get("reason", ""),
            settings=_parsed(h.get("settings", ""), Settings.from_dict),
            state=_parsed(h.get("state", ""), State.from_dict),
            last_step=int(h["last_step"]) if h.get("last_step") else None,
            target=_number(h.get("target", "")),
            error=_number(h.get("error", "")),
        )


def _parsed(text: str, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """A stored JSON document, or None when absent or no longer readable (written by another
    version of the law, or by hand): the thermostat then has no settings (it decides nothing
    until a person PUTs them) or starts a fresh state, and GET still answers."""
    if not text:
        return None
    try:
        return parse(json.loads(text))
    except (ValueError, TypeError) as e:  # SettingsError and JSONDecodeError are ValueErrors
        log.warning("thermostat: stored document ignored: %s", e)
        return None


def checked_settings(data: dict[str, Any]) -> Settings:
    """Settings from JSON that this service's control can carry out: the law's checks, the
    knob a row of the knob table (law.KNOBS may name one the table lacks) and its bounds within
    the knob's range. SettingsError names the field."""
    settings = Settings.from_dict(data)
    knob = KNOB_BY_NAME.get(settings.knob)
    if knob is None or not knob.numeric:
        numeric = ", ".join(k.name for k in KNOB_BY_NAME.values() if k.numeric)
        raise SettingsError("knob", f"{settings.knob!r} is no knob of this control ({numeric})")
    for name, value in (("lower", settings.lower), ("upper", settings.upper_bound)):
        for error in knob.errors(value):
            raise SettingsError(name, f"outside the knob's range: {error}")
    return settings


@dataclass(frozen=True)
class ThermostatGauges:
    """What /metrics shows of a run's thermostat (monitor/metrics.py)."""

    status: str
    knob: str
    value: float  # the actuator as the loss sees it (law.acting_value)
    lower: float
    upper: float
    target: float | None  # of the last decision, nats
    error: float | None  # ln(target / smoothed entropy) of the last decision
    band: float | None = None

    @property
    def saturated(self) -> bool:
        """Running, at its upper bound, and entropy still below the target (beyond the band): it
        cannot hold the target. Every actuator only raises entropy, so a knob at its lower bound
        with entropy above the target is the normal start of a falling schedule, not this."""
        if self.status != "running" or self.error is None:
            return False
        return self.value >= self.upper and self.error > math.log1p(self.band or 0.0)


def thermostat_gauges(fields: dict[str, str], control: Control) -> ThermostatGauges | None:
    """From snapshot.lua's read of the thermostat hash; None without settings."""
    try:
        settings = Settings.from_dict(json.loads(fields["settings"]))
    except (KeyError, ValueError):  # none, or unreadable (SettingsError is a ValueError)
        return None
    knobs = control.knobs()
    if settings.knob not in knobs:
        return None
    return ThermostatGauges(
        status=fields.get("status", "off"),
        knob=settings.knob,
        value=acting_value(settings.knob, settings.lower, knobs),
        lower=settings.lower,
        upper=settings.upper_bound,
        target=_number(fields.get("target", "")),
        error=_number(fields.get("error", "")),
        band=settings.band,
    )


def _readable(model: type[_Model], raw: Iterable[str]) -> list[_Model]:
    """The entries that parse; one of another format (an older service) is left out, logged."""
    entries = []
    for r in raw:
        try:
            entries.append(model.model_validate_json(r))
        except ValueError as e:  # pydantic's ValidationError is one
            log.warning("thermostat: unreadable %s entry left out: %s", model.__name__, e)
    return entries


def _number(text: str) -> float | None:
    return float(text) if text else None


def _text(x: float | None) -> str:
    return "" if x is None else repr(x)


class Thermostats:
    """Reads and writes of the thermostats of a Store's Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self._step = self.redis.register_script(STEP_SCRIPT)
        self._set = self.redis.register_script(SET_SCRIPT)

    async def read(self, run: str) -> Record:
        return Record.from_hash(
            cast(dict[str, str], await self.redis.hgetall(RunKeys.of(run).thermostat))
        )

    async def decisions(self, run: str, limit: int) -> list[ThermostatDecision]:
        """Newest first."""
        raw = cast(list[str], await self.redis.lrange(RunKeys.of(run).thermostat_log, -limit, -1))
        return _readable(ThermostatDecision, reversed(raw))

    async def changes(self, run: str, limit: int) -> list[ThermostatChange]:
        """Newest first."""
        key = RunKeys.of(run).thermostat_audit
        raw = cast(list[str], await self.redis.lrange(key, -limit, -1))
        return _readable(ThermostatChange, reversed(raw))

    async def put(
        self,
        run: str,
        expected_version: int,
        expected_rev: int,
        settings: Settings | None,
        state: State,
        entry: ThermostatChange,
    ) -> tuple[int, int]:
        """(1, new version) when stored; (0, current version): stale version (412);
        (-1, version): a decision committed since the read (read again, retry)."""
        k = RunKeys.of(run)
        args: list[Any] = [
            expected_version,
            expected_rev,
            json.dumps(settings.to_dict()) if settings is not None else "",
            int(entry.enabled),
            entry.status,
            json.dumps(state.to_dict()),
            entry.model_dump_json(),
            AUDIT_CAP,
        ]
        done, version = await self._set(keys=[k.thermostat, k.thermostat_audit], args=args)
        return int(done), int(version)

    async def commit(
        self,
        run: str,
        record: Record,
        step: int,
        state: State,
        status: ThermostatStatus,
        reason: str,
        decision: ThermostatDecision,
        change: tuple[Control, AuditEntry] | None,
    ) -> int:
        """Commit a decision on `step` (thermostat_step.lua): 1 done, 0 taken (another process
        decided it, or the thermostat changed since `record` was read), -1 the control changed
        since it was read."""
        k = RunKeys.of(run)
        control, entry = change if change is not None else (None, None)
        args: list[Any] = [
            record.rev,
            step,
            json.dumps(state.to_dict()),
            status,
            reason,
            decision.model_dump_json(),
            DECISIONS_CAP,
            # a decision that measured nothing (a skip, a wait) keeps the last target and error:
            # the gauges and the saturation alert must not blink every other step
            _text(decision.target if decision.target is not None else record.target),
            _text(decision.error if decision.error is not None else record.error),
            "" if control is None else control.version - 1,
            "" if control is None else control.model_dump_json(),
            "" if entry is None else entry.model_dump_json(),
            AUDIT_CAP,
        ]
        keys = [k.thermostat, k.thermostat_log, k.control, k.audit]
        return int(await self._step(keys=keys, args=args))
