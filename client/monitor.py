"""`Monitor`: the one object a training loop holds."""

from __future__ import annotations

import atexit
import logging
import os
from types import TracebackType
from typing import Any

from client.report import build_report
from client.reporter import Reporter

log = logging.getLogger("client")

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CLOSE_TIMEOUT_S = 5.0


def _dist_rank_and_size() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Monitor:
    """Streams step statistics of one run to an entmon service.

    `log` only enqueues and never raises; reports go out on a background thread.
    Rank and world size default to torch.distributed's when it is initialised.
    """

    def __init__(
        self,
        run: str,
        url: str | None = None,
        token: str | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        **reporter_options: Any,
    ) -> None:
        dist_rank, dist_size = _dist_rank_and_size()
        self.run = run
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_size if world_size is None else world_size
        self.control: dict[str, Any] | None = None
        self.control_version: int | None = None
        self._closed = False
        self._reporter = Reporter(
            url=url or os.environ.get("ENTMON_URL", DEFAULT_URL),
            run=run,
            token=token if token is not None else os.environ.get("ENTMON_TOKEN"),
            on_response=self._on_response,
            verbose=self.rank == 0,
            **reporter_options,
        )
        atexit.register(self.close)

    def log(self, step: int, **scalars: Any) -> None:
        """Record the scalars of one step (floats, ints or 0-d tensors). Never blocks or raises."""
        if self._closed:
            return
        try:
            report = build_report(step, self.rank, self.world_size, self.control_version, scalars)
            self._reporter.submit(report)
        except Exception as e:  # the training loop is sacred
            if self.rank == 0:
                log.warning("entmon: log(step=%r) ignored: %r", step, e)

    @property
    def dropped(self) -> int:
        return self._reporter.dropped

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Flush what is queued for at most `timeout` seconds and stop the reporter thread."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._reporter.close(timeout)

    def _on_response(self, body: dict[str, Any]) -> None:
        control = body.get("control")
        if isinstance(control, dict):
            self.control = control
            self.control_version = int(control.get("version", 0))

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
