"""Control from the monitor: validated off the training thread, applied only at step
boundaries, and a malformed one rejected with a logged error while the previous one stays."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from client import Monitor
from client.control import Control
from client.control_sync import ControlSync, decode_control, encode_control
from client.log_once import LogOnce
from entmon.wire.knobs import DEFAULTS
from tests.client.conftest import FAST

GOOD = {**DEFAULTS, "loss_mode": "kl_cov", "kl_cov_ratio": 0.01, "version": 3}
MALFORMED = {
    "unknown field": ({**GOOD, "temperature": 0.7}, "temperature: unknown field"),
    "bad mode": ({**GOOD, "loss_mode": "clip_everything"}, "loss_mode"),
    "ratio out of range": ({**GOOD, "kl_cov_ratio": 2.0}, "kl_cov_ratio"),
    "lb above ub": ({**GOOD, "clip_cov_lb": 9.0}, "clip_cov_lb"),
    "negative version": ({**GOOD, "version": -1}, "version"),
    "not an object": (["kl_cov"], "expected a JSON object"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_control_is_rejected_with_an_error_and_the_previous_one_stays(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    wire, field = MALFORMED[name]
    sync = ControlSync(distributed=False, log_once=LogOnce(enabled=True))
    sync.offer(GOOD)
    assert sync.at_step_boundary(0).version == 3
    with caplog.at_level(logging.ERROR, logger="client"):
        sync.offer(wire)
    assert sync.at_step_boundary(1) == Control.from_wire(GOOD)
    (record,) = caplog.records
    assert field in record.getMessage() and "keeping version 3" in record.getMessage()


def test_a_new_control_waits_for_the_step_boundary() -> None:
    sync = ControlSync(distributed=False, log_once=LogOnce(enabled=False))
    assert sync.current == Control()
    sync.offer(GOOD)
    assert sync.current.version == 0  # the step in progress keeps its control
    assert sync.at_step_boundary(5) == Control.from_wire(GOOD)


def test_applied_versions_log_one_info_line_a_minute_and_the_rest_at_debug(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thermostat changes the control every step: the training log gets one line a minute."""
    clock = [1000.0]
    monkeypatch.setattr("client.log_once.time.monotonic", lambda: clock[0])
    sync = ControlSync(distributed=False, log_once=LogOnce(enabled=True))
    with caplog.at_level(logging.DEBUG, logger="client"):
        for step, elapsed in enumerate([0.0, 1.0, 1.0, 59.0, 1.0]):  # each a new version
            clock[0] += elapsed
            sync.offer({**GOOD, "version": 10 + step, "kl_cov_ratio": 0.01 + step / 100})
            sync.at_step_boundary(step)
    levels = [(r.levelno, r.getMessage().split(" applies")[0]) for r in caplog.records]
    assert levels == [
        (logging.INFO, "entmon: control version 10"),
        (logging.DEBUG, "entmon: control version 11"),
        (logging.DEBUG, "entmon: control version 12"),
        (logging.INFO, "entmon: control version 13"),  # 61 s after the last loud one
        (logging.DEBUG, "entmon: control version 14"),
    ]


def test_the_broadcast_encoding_round_trips() -> None:
    control = Control.from_wire(GOOD)
    assert decode_control(encode_control(control)) == control


class StubMonitor(ThreadingHTTPServer):
    """An HTTP server that answers ingest and control requests with whatever control it is
    given: the real service validates its controls, so a broken one needs a stand-in."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.control: Any = {**DEFAULTS, "version": 0}
        self.reports = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StubMonitor

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reports += len(body)
        self._answer({"accepted": len(body), "duplicates": 0, "control": self.server.control})

    def do_GET(self) -> None:
        self._answer(self.server.control)

    def _answer(self, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[StubMonitor]:
    server = StubMonitor()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def log_until(mon: Monitor, stub: StubMonitor, reports: int, start: int = 0) -> int:
    step = start
    deadline = time.monotonic() + 20
    while stub.reports < reports and time.monotonic() < deadline:
        mon.log(step, entropy=1.0)
        step += 1
        time.sleep(0.01)
    mon.log(step, entropy=1.0)  # one more boundary after the last answer
    return step + 1


def log_while(mon: Monitor, waiting: Callable[[], bool], what: str, start: int) -> int:
    """Log steps until `waiting()` turns false: the state, not the time, ends the wait."""
    step = start
    deadline = time.monotonic() + 60
    while waiting():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        mon.log(step, entropy=1.0)
        step += 1
        time.sleep(0.01)
    return step


def test_a_monitor_sending_an_unknown_field_is_ignored_with_one_logged_error(
    stub: StubMonitor, caplog: pytest.LogCaptureFixture
) -> None:
    stub.control = {**GOOD, "temperature": 0.7}

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    with (
        caplog.at_level(logging.INFO, logger="client"),
        Monitor(run="stub", url=stub.url, config=FAST) as mon,
    ):
        step = log_while(mon, lambda: not errors(), "the bad control to be judged", 0)
        step = log_until(mon, stub, stub.reports + 5, step)  # it keeps coming: still ignored
        assert mon.control == Control()  # the defaults stay
        stub.control = GOOD  # the monitor is fixed: a later boundary takes it
        log_while(mon, lambda: mon.control != Control.from_wire(GOOD), "the fixed control", step)
    assert len(errors()) == 1 and "temperature: unknown field" in errors()[0]


def test_only_rank_zero_logs(stub: StubMonitor, caplog: pytest.LogCaptureFixture) -> None:
    stub.control = {**GOOD, "temperature": 0.7}
    with (
        caplog.at_level(logging.INFO, logger="client"),
        Monitor(run="stub", url=stub.url, rank=1, world_size=2, config=FAST) as mon,
    ):
        log_until(mon, stub, 10)
        assert mon.control == Control()
    assert not caplog.records
