"""Two ranks on an NCCL default process group (one GPU each) switch to a control change at the
same step: the control broadcast runs on the Monitor's own gloo group beside NCCL, and each
rank computes its loss and statistics on its GPU. NCCL refuses two ranks on one GPU, hence two
devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client.test_transport import two_ranks_apply_a_control_change_at_the_same_step
from tests.conftest import ServerProcess


@pytest.mark.cuda(devices=2)
def test_two_nccl_ranks_apply_a_control_change_at_the_same_step(
    server: ServerProcess, tmp_path: Path
) -> None:
    two_ranks_apply_a_control_change_at_the_same_step(server, tmp_path, "nccl")
