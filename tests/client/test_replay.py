"""`entmon replay FILE` against a real server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client.replay import replay_file
from client.report import build_report, encode, finalize
from client.spool import Spool, spool_path
from entmon.cli import main
from tests.client.conftest import stored_steps, unused_url
from tests.conftest import ServerProcess


def make_spool(directory: Path, run: str, steps: range, rank: int = 0) -> Path:
    spool = Spool(spool_path(directory, run, rank), run=run, rank=rank)
    reports = [build_report(s, rank, 1, 0, {"entropy": 1.0, "lr": 0.1}) for s in steps]
    spool.append([encode(finalize(r)) for r in reports])
    spool.close()
    return spool.path


def replay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "entmon.cli", "replay", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def test_replay_uploads_in_order_then_removes_the_file_and_is_idempotent(
    shared_server: ServerProcess, tmp_path: Path
) -> None:
    path = make_spool(tmp_path, "replayed", range(20))
    copy = shutil.copy(path, tmp_path / "copy.jsonl")
    result = replay_cli(str(path), "--url", shared_server.url)
    assert result.returncode == 0, result.stderr
    assert "run replayed: 20 reports stored, 0 already there, 0 rejected" in result.stdout
    assert not path.exists()
    assert [s["step"] for s in stored_steps(shared_server.url, "replayed")] == list(range(20))
    again = replay_file(copy, url=shared_server.url)
    assert (again.accepted, again.duplicates, again.complete) == (0, 20, True)


def test_replay_keeps_the_file_when_the_monitor_is_away(tmp_path: Path) -> None:
    path = make_spool(tmp_path, "away", range(5))
    size = path.stat().st_size
    result = replay_file(path, url=unused_url(), attempts=1)
    assert not result.complete and "unreachable" in result.failure
    assert path.stat().st_size == size


def test_replay_refuses_a_file_that_is_not_a_spool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"step": 0}\n')
    assert main(["replay", str(path), "--url", unused_url()]) == 2
    assert "not an entmon spool file" in capsys.readouterr().err
    assert path.read_text() == '{"step": 0}\n'  # left alone
