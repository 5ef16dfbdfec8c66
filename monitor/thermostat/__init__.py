"""The entropy thermostat: a per-run controller that moves one control knob so that the policy
entropy follows a target. `law` is the pure decision; the service wiring keeps its state."""

from __future__ import annotations

from monitor.thermostat.law import (
    KNOBS,
    LOSS_MODE,
    Decision,
    Knob,
    Settings,
    SettingsError,
    State,
    StepInput,
    Target,
    decide,
    resume,
)

__all__ = [
    "KNOBS",
    "LOSS_MODE",
    "Decision",
    "Knob",
    "Settings",
    "SettingsError",
    "State",
    "StepInput",
    "Target",
    "decide",
    "resume",
]
