"""The client's exception hierarchy: everything it raises derives from `EntmonError`."""

from __future__ import annotations


class EntmonError(Exception):
    """Root of every error the entmon client raises on purpose."""


class ControlError(EntmonError, ValueError):
    """A control (the live loss knobs) is malformed; the message names every bad field."""
