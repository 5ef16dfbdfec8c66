"""Handing a finished step's statistics to the reporter thread.

`StepAccumulator.pack` combines the micro-batches with a few dozen small tensor operations:
about 0.4 ms of dispatch on a CPU, as long as a whole `wandb.log`. So `Monitor.log` hands the
step's accumulator over whole, starts a fresh one, and the reporter thread packs and unpacks it.

On CUDA, an event recorded on the training thread's stream at the step boundary orders the
reporter's kernels after the step's, on the accumulator's own device. The accumulator is
released only after `unpack` waited for the copy to the host, which follows those kernels on
the same stream: its memory cannot be reused while they still read it.
"""

from __future__ import annotations

from typing import Any

import torch

from client.stats import StepAccumulator


class FinishedStep:
    """Satisfies client.report.PackedStats: `unpack` runs on the reporter thread."""

    __slots__ = ("_accumulator", "_device", "_ready")

    def __init__(self, accumulator: StepAccumulator, device: torch.device) -> None:
        self._accumulator = accumulator
        self._device = device
        self._ready: torch.cuda.Event | None = None
        if device.type == "cuda":
            self._ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._ready.record(torch.cuda.current_stream(device))

    def unpack(self, tokenizer: Any = None) -> dict[str, Any]:
        if self._ready is None:
            return self._accumulator.pack().unpack(tokenizer)
        with torch.cuda.device(self._device):  # this thread's current device may be another
            torch.cuda.current_stream().wait_event(self._ready)
            return self._accumulator.pack().unpack(tokenizer)
