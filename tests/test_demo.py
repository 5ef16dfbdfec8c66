from __future__ import annotations

import os
import subprocess
import sys

from monitor.embedded_redis import free_port


def test_headless_demo_runs_the_embedded_stack_and_exits_0() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    result = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--headless", "--steps", "30",
         "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "monitor:" in result.stdout
    assert "step 30/30" in result.stdout
