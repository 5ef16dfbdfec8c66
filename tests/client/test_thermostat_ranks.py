"""The thermostat's changes through two real data-parallel ranks (gloo): each change is applied
by both ranks at the same step, as a person's is (tests/client/test_transport.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.client.conftest import stored_steps
from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
STEPS = 80


def test_two_gloo_ranks_apply_each_thermostat_change_at_the_same_step(
    server: ServerProcess, tmp_path: Path
) -> None:
    # The ranks report 1.0 nats (tests/client/rank_worker.py): below 2.0, so the thermostat
    # raises the KL-Cov ratio, a new control version every other step until its bound.
    settings = {"target": {"points": [[0, 2.0]]}, "knob": "kl_cov_ratio"}
    r = httpx.put(
        f"{server.url}/v1/runs/ddp-thermo/thermostat",
        json={"enabled": True, "settings": settings, "reason": "test"},
        headers={"If-Match": '"0"'},
    )
    assert r.status_code == 200, r.text
    outs = [tmp_path / f"rank{r}.json" for r in (0, 1)]
    # 0.1 s a step: the thermostat decides and its changes come back within the run, also
    # beside CPU hogs (each decision waits for the step that ran the last change)
    env = os.environ | {"ENTMON_SPOOL_DIR": str(tmp_path / "spool"), "RANK_WORKER_STEP_S": "0.1"}
    worker = [sys.executable, "-m", "tests.client.rank_worker"]
    args = [str(tmp_path / "init"), server.url, "ddp-thermo", str(STEPS)]
    procs = [
        subprocess.Popen([*worker, str(r), "2", *args, str(outs[r]), "gloo"], cwd=ROOT, env=env)
        for r in (0, 1)
    ]
    try:
        codes = [p.wait(180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0]
    used = [json.loads(out.read_text())["used"] for out in outs]
    assert used[0] == used[1]  # every version at the same step on both ranks
    assert used[0] == sorted(used[0])
    audit = httpx.get(f"{server.url}/v1/runs/ddp-thermo/audit").json()["entries"]
    by_thermostat = {e["version"] for e in audit if e["who"] == "thermostat"}
    applied = set(used[0]) - {0}
    assert len(by_thermostat) >= 2 and applied and applied <= by_thermostat, (used[0], audit)
    stored = stored_steps(server.url, "ddp-thermo")
    assert [s["ranks"] for s in stored] == [2] * STEPS
    assert [s["control_version"] for s in stored] == used[0]
