"""The settings both sides of the verl integration read: the actor processes' loss
(client.integrations.verl) and the driver (client.integrations.verl_driver). They come from the
environment verl's Ray job gives its processes (`ray_kwargs.ray_init.runtime_env.env_vars`)."""

from __future__ import annotations

from client.errors import EntmonError

LOSS_MODE = "entmon"
RUN_ENV = "ENTMON_RUN"
UPDATES_PER_STEP_ENV = "ENTMON_VERL_UPDATES_PER_STEP"
FIRST_STEP_ENV = "ENTMON_VERL_FIRST_STEP"
DEFAULT_UPDATES_PER_STEP = 1
DEFAULT_FIRST_STEP = 1  # verl counts global steps from 1


def parse_int(name: str, raw: str | None, default: int, minimum: int) -> int:
    """The integer setting `name` given as `raw` (None or empty: `default`); EntmonError when it
    is not an integer >= minimum."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise EntmonError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value
