"""Which control each step uses: the live knobs change only at step boundaries.

The reporter thread `offer`s every control the monitor sends (in ingest answers and idle polls);
it is validated there, off the training thread, and a malformed one is logged and ignored, so the
previous control stays. The training thread calls `at_step_boundary` from `Monitor.log`.

With torch.distributed, rank 0 decides: at every boundary it broadcasts the control it would
apply (a fixed-size byte tensor over a dedicated gloo group, asynchronously) and every rank
applies the broadcast of the previous boundary. So all ranks switch at the same step, one step
after rank 0 learnt of the change, and the training thread never waits on the network: the
broadcast had a whole step to finish. Every rank must therefore create the Monitor and call
`log` once per step (as with any collective); `Monitor(..., sync_control=False)` opts out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch

from client.control import Control
from client.errors import ControlError
from client.log_once import LogOnce

CONTROL_BYTES = 1024  # broadcast buffer: 8-byte length, then the control as JSON
LENGTH_BYTES = 8
APPLIED_LOG_EVERY_S = 60.0  # a thermostat may change the control every step: not a line each


def encode_control(control: Control) -> torch.Tensor:
    payload = json.dumps(control.to_wire(), separators=(",", ":")).encode()
    if len(payload) > CONTROL_BYTES - LENGTH_BYTES:
        raise ControlError(f"control too large to broadcast ({len(payload)} bytes)")
    data = len(payload).to_bytes(LENGTH_BYTES, "little") + payload
    buf = torch.zeros(CONTROL_BYTES, dtype=torch.uint8)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return buf


def decode_control(buf: torch.Tensor) -> Control:
    raw = bytes(buf.tolist())
    n = int.from_bytes(raw[:LENGTH_BYTES], "little")
    return Control.from_wire(json.loads(raw[LENGTH_BYTES : LENGTH_BYTES + n]))


class ControlSync:
    def __init__(self, *, distributed: bool, log_once: LogOnce) -> None:
        self.current = Control()  # the service's defaults, version 0, until it says otherwise
        self._offered: Control | None = None
        self._last_wire: Any = None
        self._encoded: tuple[Control | None, torch.Tensor] = (None, torch.empty(0))
        self._log_once = log_once
        self._group: Any = None
        self._rank = 0
        self._inflight: tuple[Any, torch.Tensor] | None = None
        if distributed:
            import torch.distributed as dist

            self._rank = dist.get_rank()
            # Own gloo group: CPU tensors, no CUDA stream involved, and out of the way of the
            # training's NCCL collectives. Every rank must get here (it is a collective).
            self._group = dist.new_group(backend="gloo", timeout=timedelta(minutes=30))

    @property
    def decides(self) -> bool:
        """Whether this process listens to the monitor (rank 0, or any rank when not synced)."""
        return self._group is None or self._rank == 0

    def offer(self, wire: Any) -> None:
        """A control as the monitor sent it (reporter thread). Invalid: logged, ignored."""
        if wire is None or wire == self._last_wire:
            return
        self._last_wire = wire
        try:
            if not isinstance(wire, Mapping):
                raise ControlError(f"invalid control: expected a JSON object, got {wire!r:.100}")
            control = Control.from_wire(wire)
        except ControlError as e:
            self._log_once(
                f"control:{e}",
                f"ignoring a control from the monitor, keeping version {self.current.version}: {e}",
                logging.ERROR,
            )
            return
        self._offered = control  # one reference: the training thread reads it whole

    def at_step_boundary(self, step: int) -> Control:
        """The control for the steps after `step` (training thread)."""
        if self._group is None:
            chosen = self._offered
            if chosen is not None and chosen is not self.current:
                self._apply(chosen, step)
            return self.current
        import torch.distributed as dist

        if self._inflight is not None:  # rank 0's choice at the previous boundary
            work, buf = self._inflight
            self._inflight = None
            work.wait()
            self._apply(decode_control(buf), step)
        if self._rank == 0:
            chosen = self._offered or self.current
            if chosen is not self._encoded[0]:  # the broadcast only reads it: reuse it
                self._encoded = (chosen, encode_control(chosen))
            buf = self._encoded[1]
        else:
            buf = torch.empty(CONTROL_BYTES, dtype=torch.uint8)
        work = dist.broadcast(buf, src=0, group=self._group, async_op=True)
        self._inflight = (work, buf)
        return self.current

    def _apply(self, control: Control, step: int) -> None:
        if control != self.current:
            self._log_once.at_most_every(
                "applied",
                APPLIED_LOG_EVERY_S,
                f"control version {control.version} applies from step {step + 1}: "
                f"{control.knobs()}",
                logging.INFO,
            )
            self.current = control

    def close(self, timeout: float) -> None:
        """Finish the broadcast in flight (every rank closes, so it completes)."""
        if self._inflight is not None:
            work, _ = self._inflight
            self._inflight = None
            work.wait(timedelta(seconds=max(0.1, timeout)))
