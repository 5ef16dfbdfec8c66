from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.demo import DemoError, load_toy
from monitor.embedded_redis import free_port


def test_headless_demo_trains_for_real_and_follows_a_live_control_change() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTMON_")}
    result = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--headless", "--steps", "40",
         "--switch-at", "10", "--switch-to", "kl_cov", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "monitor:" in out and "step 40/40" in out
    lines = out.replace("\r", "\n").splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    entropies = [float(m[1]) for line in progress if (m := re.search(r"entropy (\S+)", line))]
    assert len(entropies) == 40 and all(math.isfinite(h) and 0 < h < 2.31 for h in entropies)
    modes = [m[1] for line in progress if (m := re.search(r"loss (\w+)", line))]
    # the PUT after step 10 went through the server and the Monitor into the loss (30 steps of
    # margin for it to arrive on a busy machine)
    assert modes[:10] == ["vanilla"] * 10 and modes[-1] == "kl_cov"
    assert "trained 40 steps" in out


def test_load_toy_says_what_to_do_without_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="checkout of the repository"):
        load_toy(tmp_path / "examples" / "grpo_toy.py")
