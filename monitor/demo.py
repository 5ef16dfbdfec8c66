"""`entmon demo`: the embedded stack (Redis + monitor + dashboard) and a live run streaming into it.

The run streamed here is a synthetic collapsing curve (entropy decaying, reward following the
entropy-performance law), a stand-in until the real CPU GRPO toy trainer lands in examples/.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from monitor.cli import dashboard_command

READY_TIMEOUT_S = 60.0


def _wait_ready(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} at start-up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready at {url} after {READY_TIMEOUT_S}s")


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


def synthetic_run(url: str, run: str, steps: int, *, delay_s: float = 0.02) -> None:
    from client import Monitor

    rng = random.Random(0)
    a, b = 0.45, 1.05  # R = -a exp(H) + b
    with Monitor(run=run, url=url) as mon:
        for step in range(steps):
            entropy = 0.05 + 1.2 * math.exp(-step / 60)
            reward = -a * math.exp(entropy) + b + rng.gauss(0, 0.01)
            mon.log(step, entropy=entropy, reward=reward, tokens=4096)
            print(f"\rstep {step + 1}/{steps}  entropy {entropy:.3f}  reward {reward:.3f}", end="")
            time.sleep(delay_s)
    print()


def run_demo(*, steps: int, headless: bool, port: int, dashboard_port: int) -> int:
    api = f"http://127.0.0.1:{port}"
    data_dir = Path(tempfile.mkdtemp(prefix="entmon-demo-"))
    env = {**os.environ, "ENTMON_URL": api, "ENTMON_DATA_DIR": str(data_dir)}
    env.pop("ENTMON_REDIS_URL", None)  # the demo always uses the embedded Redis
    entmon = [sys.executable, "-m", "monitor.cli"]
    processes = [
        subprocess.Popen([*entmon, "serve", "--port", str(port), "--log-level", "warning"], env=env)
    ]
    try:
        _wait_ready(f"{api}/readyz", processes[0], "monitor")
        print(f"monitor:   {api}  (API docs {api}/docs, metrics {api}/metrics)")
        if not headless:
            processes.append(subprocess.Popen(dashboard_command(dashboard_port), env=env))
            _wait_ready(
                f"http://127.0.0.1:{dashboard_port}/_stcore/health", processes[1], "dashboard"
            )
            print(f"dashboard: http://127.0.0.1:{dashboard_port}/?run=demo")
        synthetic_run(api, "demo", steps)
        if headless:
            return 0
        print("training done; the stack stays up. Ctrl-C to stop.")
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(processes)
        shutil.rmtree(data_dir, ignore_errors=True)
