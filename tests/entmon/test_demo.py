from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.embedded_redis import free_port


def test_headless_demo_trains_for_real_and_follows_a_live_control_change(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    env["ENTMON_DATA_DIR"] = str(tmp_path / "data")
    with socket.socket() as busy:  # something (vLLM, say) already listens on the port asked for
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "entmon.cli", "demo", "--headless", "--steps", "40",
             "--switch-at", "10", "--switch-to", "kl_cov", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"port {port} is busy" in out
    assert list((tmp_path / "data").rglob("*.aof*")), "the run's data is kept where the user said"
    assert "monitor:" in out and "step 39 [" in out and "40/40 done" in out
    lines = out.replace("\r", "\n").splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    entropies = [float(m[1]) for line in progress if (m := re.search(r"entropy (\S+)", line))]
    assert len(entropies) == 40 and all(math.isfinite(h) and 0 < h < 2.31 for h in entropies)
    modes = [m[1] for line in progress if (m := re.search(r"loss (\w+)", line))]
    # the PUT after step 10 went through the server and the Monitor into the loss (30 steps of
    # margin for it to arrive on a busy machine)
    assert modes[:10] == ["vanilla"] * 10 and modes[-1] == "kl_cov"
    assert "trained 40 steps" in out


def test_the_demo_without_the_client_says_how_to_install_it() -> None:
    """A wheel installed with only the `server` extra has no torch: the demo names the extra."""
    blocked = (
        "import sys; sys.modules['torch'] = None; "  # any `import torch` now raises ImportError
        "from entmon.demo.stack import DemoError, load_toy\n"
        "try:\n    load_toy()\nexcept DemoError as e:\n    print(e)"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "entmon[all]"' in done.stdout


def test_ctrl_c_stops_the_demo_and_its_processes_saying_so_once(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: the dashboard, told once
    by the demo, prints Streamlit's "Stopping..." once, and nothing is left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    env["ENTMON_DATA_DIR"] = str(tmp_path / "data")
    ports = [free_port(), free_port()]
    demo = subprocess.Popen(
        [sys.executable, "-m", "entmon.cli", "demo", "--steps", "2", "--pace", "0",
         "--port", str(ports[0]), "--dashboard-port", str(ports[1])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )  # fmt: skip
    assert demo.stdout is not None
    out = []
    for line in demo.stdout:  # blocks until the stack is up and the run trained
        out.append(line)
        if "Ctrl-C to stop" in line:
            break
    else:
        raise AssertionError("".join(out)[-2000:])
    os.killpg(demo.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    rest, _ = demo.communicate(timeout=60)
    text = "".join(out) + rest
    assert demo.returncode == 0, text[-2000:]
    assert text.count("Stopping...") == 1, text[-2000:]
    assert "restarting it" not in text  # the monitor's Redis was not killed under it
    for port in ports:  # the monitor and the dashboard, in their own sessions, were stopped
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass


def test_headless_demo_runs_the_lm_testbed(tmp_path: Path) -> None:
    import torch

    from entmon.demo.testbed.model import TraceLM
    from entmon.demo.testbed.pretrain import PretrainConfig
    from monitor.embedded_redis import free_port

    cfg = PretrainConfig()  # a fresh model in the cache stands in for the pretrained one
    (tmp_path / "cache").mkdir()
    torch.save(TraceLM(cfg.model).state_dict(), tmp_path / "cache" / f"testbed-lm-{cfg.key()}.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    env["ENTMON_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run(
        [sys.executable, "-m", "entmon.cli", "demo", "--headless", "--testbed", "lm",
         "--steps", "3", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3/3 done" in result.stdout and "trained 3 steps" in result.stdout


def test_headless_demo_with_the_thermostat_decides_every_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    env["ENTMON_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "entmon.cli", "demo", "--headless", "--steps", "25",
         "--thermostat"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = re.search(r"thermostat: (\w+), decided up to step (\d+)", result.stdout)
    assert summary is not None, result.stdout[-2000:]
    # running on the toy's steps (the last one or two may still be in flight at the summary)
    assert summary[1] == "running" and int(summary[2]) >= 20
    assert "target" in result.stdout.rpartition("last decision:")[2]
