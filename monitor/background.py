"""One asyncio task a service process runs beside its requests (the gauge refresher, the
thermostat): started with the app, cancelled at shutdown without waiting long."""

from __future__ import annotations

import asyncio

STOP_TIMEOUT_S = 2.0  # shutdown must not hang on a Redis read that a cancellation does not end


class Background:
    name = "entmon-background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)

    async def _loop(self) -> None:
        raise NotImplementedError
