"""The background reporter: a bounded queue drained by one daemon thread over one keep-alive
HTTP connection. The training thread only enqueues; nothing here raises into it."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from client.report import finalize

log = logging.getLogger("client")

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 5.0
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0


class Reporter:
    def __init__(
        self,
        *,
        url: str,
        run: str,
        token: str | None,
        on_response: Callable[[dict[str, Any]], None],
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        verbose: bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
        self._path = f"/v1/runs/{run}/reports"
        self._on_response = on_response
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._verbose = verbose
        self._stop = threading.Event()
        self._logged: set[str] = set()
        self.dropped = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="entmon-reporter", daemon=True)
        self._thread.start()

    def submit(self, report: dict[str, Any]) -> None:
        """Enqueue without blocking; a full queue drops the report and counts it."""
        try:
            self._queue.put_nowait(report)
        except queue.Full:
            self.dropped += 1
            self._log_once("queue_full", "report queue full: dropping reports (server too slow?)")

    def close(self, timeout: float) -> None:
        """Send what is queued until `timeout`, then stop; returns within `timeout`."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._log_once("close_timeout", f"close: unsent reports abandoned after {timeout}s")
        self._http.close()

    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        failures = 0
        while True:
            if not batch:
                batch = self._take_batch()
                if not batch:
                    if self._stop.is_set():
                        return
                    continue
            if self._post(batch):
                batch, failures = [], 0
                continue
            if self._stop.is_set():  # closing: no more retries
                self.dropped += len(batch) + self._queue.qsize()
                return
            failures += 1
            delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures) * random.uniform(0.5, 1.0)
            self._stop.wait(delay)

    def _take_batch(self) -> list[dict[str, Any]]:
        try:
            first = self._queue.get(timeout=self._flush_interval_s)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [finalize(r) for r in batch]

    def _post(self, batch: list[dict[str, Any]]) -> bool:
        """True when the batch is done with (stored, or rejected for good); False to retry."""
        try:
            response = self._http.post(self._path, json=batch)
        except httpx.HTTPError as e:
            self._log_once(f"http:{type(e).__name__}", f"cannot reach the monitor: {e!r}; retrying")
            return False
        if response.status_code >= 500:
            self._log_once("5xx", f"monitor answered {response.status_code}; retrying")
            return False
        if response.status_code >= 400:  # the server will never take these: do not retry
            self.dropped += len(batch)
            self._log_once(
                f"{response.status_code}",
                f"monitor rejected reports ({response.status_code}): {response.text[:500]}",
            )
            return True
        self.sent += len(batch)
        try:
            self._on_response(response.json())
        except Exception as e:  # a bad answer must not kill the reporter
            self._log_once("bad_response", f"unusable answer from the monitor: {e!r}")
        return True

    def _log_once(self, kind: str, message: str) -> None:
        if self._verbose and kind not in self._logged:
            self._logged.add(kind)
            log.warning("entmon: %s", message)
