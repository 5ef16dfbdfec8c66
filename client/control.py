"""The live loss knobs as one small immutable object.

Its fields are the rows of the knob table `entmon.wire.knobs.KNOBS` (verl's names, the paper's
defaults, the validation the service applies too), so a knob added there is a field here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from typing import Any

from client.errors import ControlError
from entmon.wire.knobs import DEFAULTS, KNOB_BY_NAME, KNOB_NAMES, control_errors


class Control:
    """Which policy loss to use and its knobs; `version` is the service's control version.

    Knobs read as attributes (`control.loss_mode`, `control.clip_cov_ratio`, ...). Ratios are
    FRACTIONS of the valid tokens (2e-4 means 0.02%), as in verl; the authors' repository takes
    percentages for KL-Cov. Construction validates and raises `ControlError`; instances are
    immutable and compare by value.
    """

    __slots__ = ("_knobs", "version")
    _knobs: dict[str, Any]
    version: int

    def __init__(self, *, version: int = 0, **knobs: Any) -> None:
        errors = [f"{k}: unknown knob" for k in knobs if k not in KNOB_BY_NAME]
        values = {**DEFAULTS, **knobs}
        errors += [] if errors else control_errors(values)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            errors.append(f"version: must be an integer >= 0, got {version!r}")
        if errors:
            raise ControlError("invalid control: " + "; ".join(errors))
        for name in KNOB_NAMES:  # numbers as floats, whatever number type they came as
            if KNOB_BY_NAME[name].numeric:
                values[name] = float(values[name])
        object.__setattr__(self, "_knobs", values)
        object.__setattr__(self, "version", version)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._knobs[name]
        except KeyError:
            raise AttributeError(f"Control has no knob {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"Control is immutable: use replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Control):
            return NotImplemented
        return self.version == other.version and self._knobs == other._knobs

    def __hash__(self) -> int:
        return hash((self.version, tuple(self._knobs.values())))

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self._knobs.items())
        return f"Control({knobs}, version={self.version})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: rank workers receive controls
        return (_rebuild, (self.to_wire(),))

    @classmethod
    def from_wire(cls, mapping: Mapping[str, Any]) -> Control:
        """A control from the service's JSON; absent knobs take their defaults.

        Raises `ControlError` naming every unknown or invalid field at once.
        """
        unknown = [f"{k}: unknown field" for k in mapping if k != "version" and k not in DEFAULTS]
        if unknown:
            raise ControlError("invalid control: " + "; ".join(unknown))
        knobs = {k: v for k, v in mapping.items() if k != "version"}
        return cls(**knobs, version=mapping.get("version", 0))

    def replace(self, **changes: Any) -> Control:
        """A copy with some knobs (or the version) changed, validated again."""
        return Control(**{**self.to_wire(), **changes})

    def knobs(self) -> dict[str, Any]:
        """The knobs without the version."""
        return dict(self._knobs)

    def to_wire(self) -> dict[str, Any]:
        return {**self._knobs, "version": self.version}


def _rebuild(wire: dict[str, Any]) -> Control:
    return Control(**wire)
