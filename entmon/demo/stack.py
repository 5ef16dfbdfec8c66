"""The demo's stack and run: start the monitor (embedded Redis) and the dashboard as child
processes, then train a testbed (entmon.demo.testbeds: the toy by default, or the pretrained
tiny LM) in this process through `client.Monitor`, like
any user's loop: its policy loss follows the run's LIVE control, so switching the run to Clip-Cov
or KL-Cov in the dashboard changes the loss at the next step."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from entmon.commands import dashboard_command, entmon_command
from entmon.demo import testbeds
from monitor.embedded_redis import free_port

READY_TIMEOUT_S = 60.0
DEMO_RUN = "demo"
DEFAULT_PACE_S = 1.0  # with a browser: entropy has fallen by a quarter at about step 35
HINT = """\
           Plain GRPO: entropy halves by about step 80 while the reward stalls near 0.43.
           On the Control page, switch loss_mode to kl_cov (or clip_cov) early, before about
           step 35: entropy then stays nearly flat and the run ends with more reward. Switched
           after the collapse, entropy only falls a little more slowly; it does not come back.
           (docs/reproduce.json has the measurements; --pace 2 gives you more time.)"""

LM_HINT = """\
           The LM testbed: a tiny pretrained model; entropy sits on the few operator tokens.
           Switch loss_mode to kl_cov or clip_cov on the Control page and compare with plain
           GRPO (README: "The second testbed" has the measurements)."""


class DemoError(RuntimeError):
    """The demo cannot start; the message says what to do."""


def load_toy() -> Any:
    """entmon.demo.toy, which needs the client (torch): the error says how to install it."""
    try:
        from entmon.demo import toy
    except ImportError as e:
        raise DemoError(
            f'the demo trains with the client, which is not installed: pip install "entmon[all]" '
            f"(and torch for your machine first) ({e})"
        ) from None
    return toy


def load_testbed(name: str) -> testbeds.Testbed:
    """The testbed's trainer (needs the client, as `load_toy` says)."""
    load_toy()
    return testbeds.load(name)


def _wait_ready(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"{name} exited with code {process.returncode} at start-up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise DemoError(f"{name} not ready at {url} after {READY_TIMEOUT_S}s")


def _child(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process of the stack in its own session: Ctrl-C in the terminal signals the demo's
    process group, so without this each child would get it too and then the demo's terminate
    (Streamlit said "Stopping..." twice; the monitor restarted its Redis, killed by the same
    Ctrl-C, while shutting down). The demo stops them, once, in `_stop`."""
    return subprocess.Popen(command, env=env, start_new_session=True)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _free_or_other(port: int, name: str) -> int:
    """`port` if nothing listens on it, else a free one, said on the terminal."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            pass
    other = free_port()
    print(f"{name}: port {port} is busy (vLLM and TRL's vllm-serve use 8000): using {other}")
    return other


def _clear_progress_before_logs() -> None:
    """On a terminal, a log line first clears the progress line (which ends in \r), rather
    than being glued to its end."""
    if not sys.stderr.isatty():
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ClearLine(handler.formatter or logging.Formatter()))


class _ClearLine(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return "\r\x1b[K" + self.inner.format(record)  # carriage return, erase the line


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    """SIGTERM, SIGHUP (the terminal closed: the children, in their own sessions, do not get it)
    and SIGINT (even where a shell started us with it ignored) stop the demo like Ctrl-C: through
    the `finally` that stops the child processes, never leaving them behind."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _raise_interrupt)


def put_control(api: str, run: str, reason: str, **knobs: Any) -> dict[str, Any]:
    """Change a run's control the way the dashboard does: read the version, PUT with If-Match."""
    url = f"{api}/v1/runs/{run}/control"
    etag = httpx.get(url, timeout=5.0).raise_for_status().headers["ETag"]
    response = httpx.put(url, json={**knobs, "reason": reason}, headers={"If-Match": etag})
    body: dict[str, Any] = response.raise_for_status().json()
    return body


# The thermostat of `demo --thermostat`: bench/thermostat.py's default target, a schedule linear
# from 0.8 to 0.1 x the start entropy over 300 steps, on the entropy bonus (the law's defaults).
THERMOSTAT_SCHEDULE = [[0, 0.8], [299, 0.1]]


def enable_thermostat(api: str, run: str) -> dict[str, Any]:
    """Enable the run's thermostat the way a person would: read its version, PUT with If-Match."""
    url = f"{api}/v1/runs/{run}/thermostat"
    etag = httpx.get(url, timeout=5.0).raise_for_status().headers["ETag"]
    settings = {
        "target": {"points": THERMOSTAT_SCHEDULE, "of_start": True},
        "knob": "entropy_coeff",
    }
    body = {"enabled": True, "settings": settings, "reason": "entmon demo --thermostat"}
    response = httpx.put(url, json=body, headers={"If-Match": etag}, timeout=5.0)
    answer: dict[str, Any] = response.raise_for_status().json()
    return answer


def thermostat_summary(api: str, run: str) -> str:
    t = httpx.get(f"{api}/v1/runs/{run}/thermostat", timeout=5.0).raise_for_status().json()
    last = t["decisions"][0]["reason"] if t["decisions"] else "none"
    written = (t["law_state"] or {}).get("decisions", 0)
    return (
        f"thermostat: {t['status']}, decided up to step {t['last_step']}, {written} knob "
        f"changes, {t['knob']} now {t['actuator_value']}; last decision: {last}"
    )


def run_training(
    api: str,
    *,
    steps: int,
    seed: int,
    switch_at: int | None = None,
    switch_to: str = "kl_cov",
    spool_dir: Path | None = None,
    pace: float = 0.0,
    testbed: str = testbeds.DEFAULT,
    thermostat: bool = False,
) -> list[Any]:
    """The testbed's GRPO run against the monitor at `api`, with a progress line on the terminal.

    With `switch_at`, the demo itself changes the run's loss mode through the API after that
    step, as a user would in the dashboard; the trainer picks it up at a step boundary. `pace`
    is the least time a step takes (seconds), so a person can follow and react. `thermostat`:
    the service's entropy thermostat drives the entropy bonus along a falling schedule.
    """
    from client import Monitor

    toy = load_toy()
    bed = load_testbed(testbed)
    cfg = bed.config(steps=steps, seed=seed)
    bed.prepare(cfg)  # the LM's pretraining, cached: before the run's first report
    put_control(
        api, DEMO_RUN,
        f"demo: Clip-Cov / KL-Cov ratios {bed.ratio_note}; switch loss_mode to try them",
        loss_mode="vanilla",
        clip_cov_ratio=bed.clip_cov_ratio,
        kl_cov_ratio=bed.kl_cov_ratio,
    )  # fmt: skip
    if thermostat:
        enable_thermostat(api, DEMO_RUN)
    start: list[float] = []

    def on_step(record: Any) -> None:
        if not start:
            start.append(record.entropy)
        print(toy.progress_line(record, steps, start[0]), end="", flush=True)
        time.sleep(max(0.0, pace - record.seconds))
        if switch_at is not None and record.step == switch_at:  # as logged, from 0
            put_control(api, DEMO_RUN, f"demo --switch-at {switch_at}", loss_mode=switch_to)

    tokenizer = bed.tokenizer()
    began = time.monotonic()
    with Monitor(run=DEMO_RUN, url=api, tokenizer=tokenizer, spool_dir=spool_dir) as mon:
        records: list[Any] = bed.train(cfg, mon, on_step=on_step)
    print()
    if records:
        first, last = records[0], records[-1]
        print(
            f"trained {len(records)} steps in {time.monotonic() - began:.0f} s: entropy "
            f"{first.entropy:.3f} -> {last.entropy:.3f} ({last.entropy / first.entropy:.0%} of "
            f"start), reward {first.reward:.3f} -> {last.reward:.3f}, loss {last.loss_mode}"
        )
    if thermostat:
        print(thermostat_summary(api, DEMO_RUN))
    return records


def run_demo(
    *,
    steps: int,
    headless: bool,
    port: int,
    dashboard_port: int,
    seed: int = 0,
    switch_at: int | None = None,
    switch_to: str = "kl_cov",
    pace: float | None = None,
    testbed: str = testbeds.DEFAULT,
    thermostat: bool = False,
) -> int:
    port = _free_or_other(port, "monitor")
    dashboard_port = dashboard_port if headless else _free_or_other(dashboard_port, "dashboard")
    api = f"http://127.0.0.1:{port}"
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the bar
    _clear_progress_before_logs()
    kept = os.environ.get("ENTMON_DATA_DIR")
    data_dir = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="entmon-demo-"))
    print(
        f"data:      {data_dir} (kept: ENTMON_DATA_DIR)"
        if kept
        else f"data:      {data_dir} (deleted at exit; set ENTMON_DATA_DIR to keep the run)"
    )
    env = {**os.environ, "ENTMON_URL": api, "ENTMON_DATA_DIR": str(data_dir)}
    env.pop("ENTMON_REDIS_URL", None)  # the demo always uses the embedded Redis
    env.pop("ENTMON_INGEST_TOKENS", None)  # open access on loopback: the demo changes controls
    env.pop("ENTMON_ADMIN_TOKENS", None)
    _stop_on_sigterm()
    processes = [
        _child(entmon_command("serve", "--port", str(port), "--log-level", "warning"), env)
    ]
    try:
        load_testbed(testbed)  # fail early, before anything waits on the stack
        _wait_ready(f"{api}/readyz", processes[0], "monitor")
        print(f"monitor:   {api}  (API docs {api}/docs, metrics {api}/metrics)")
        if not headless:
            processes.append(_child(dashboard_command(dashboard_port), env))
            _wait_ready(
                f"http://127.0.0.1:{dashboard_port}/_stcore/health", processes[1], "dashboard"
            )
            print(f"dashboard: http://127.0.0.1:{dashboard_port}/?run={DEMO_RUN}")
            print(HINT if testbed == "toy" else LM_HINT)
        if pace is None:
            pace = 0.0 if headless else DEFAULT_PACE_S
        if pace > 0:
            print(f"           paced at >= {pace:g} s/step to be followed (--pace 0: full speed)")
        run_training(
            api, steps=steps, seed=seed, switch_at=switch_at, switch_to=switch_to,
            spool_dir=data_dir / "spool", pace=pace, testbed=testbed,
            thermostat=thermostat,
        )  # fmt: skip
        if headless:
            return 0
        print("training done; the stack stays up. Ctrl-C to stop.")
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        print()
        return 0
    except DemoError as e:
        print(f"entmon demo: {e}", file=sys.stderr)
        return 2
    finally:
        _stop(processes)
        if not kept:
            shutil.rmtree(data_dir, ignore_errors=True)
