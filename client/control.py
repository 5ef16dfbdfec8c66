"""The live loss knobs as one small immutable object.

`Control` is a frozen, keyword-only dataclass whose fields are the rows of the knob table
`entmon.wire.knobs.KNOBS` (verl's names, the paper's defaults, the validation the service applies
too), plus `version`: a knob added there is a field here, and `dataclasses.replace`, `asdict` and
`fields` work as on any dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from client.errors import ControlError
from entmon.wire.knobs import DEFAULTS, KNOB_BY_NAME, KNOB_NAMES, KNOBS, control_errors


class _ControlMethods:
    """Which policy loss to use and its knobs; `version` is the service's control version.

    Ratios are FRACTIONS of the valid tokens (2e-4 means 0.02%), as in verl; the authors'
    repository takes percentages for KL-Cov. Construction validates and raises `ControlError`.
    """

    version: int

    if TYPE_CHECKING:  # the fields are made from the knob table below

        def __init__(self, *, version: int = 0, **knobs: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    def __post_init__(self) -> None:
        errors = control_errors(self.knobs())
        version = self.version
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            errors.append(f"version: must be an integer >= 0, got {version!r}")
        if errors:
            raise ControlError("invalid control: " + "; ".join(errors))
        for name in KNOB_NAMES:  # numbers as floats, whatever number type they came as
            if KNOB_BY_NAME[name].numeric:
                object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def from_wire(cls, mapping: Mapping[str, Any]) -> Control:
        """A control from the service's JSON; absent knobs take their defaults.

        Raises `ControlError` naming every unknown or invalid field at once.
        """
        unknown = [f"{k}: unknown field" for k in mapping if k != "version" and k not in DEFAULTS]
        if unknown:
            raise ControlError("invalid control: " + "; ".join(unknown))
        return Control(**mapping)

    def replace(self, **changes: Any) -> Control:
        """A copy with some knobs (or the version) changed, validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def knobs(self) -> dict[str, Any]:
        """The knobs without the version."""
        return {name: getattr(self, name) for name in KNOB_NAMES}

    def to_wire(self) -> dict[str, Any]:
        return {**self.knobs(), "version": self.version}


if TYPE_CHECKING:
    Control = _ControlMethods
else:
    Control = dataclasses.make_dataclass(
        "Control",
        [(k.name, float if k.numeric else str, dataclasses.field(default=k.default)) for k in KNOBS]
        + [("version", int, dataclasses.field(default=0))],
        bases=(_ControlMethods,),
        frozen=True,
        kw_only=True,
        namespace={"__module__": __name__, "__doc__": _ControlMethods.__doc__},  # for pickle
    )
