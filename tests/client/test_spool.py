from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.spool import Spool, SpoolError, SpoolWriteError, spool_path


def lines(steps: range) -> list[bytes]:
    return [json.dumps({"step": s, "stats": {}}).encode() for s in steps]


def steps_of(batch: list[bytes]) -> list[int]:
    return [json.loads(line)["step"] for line in batch]


def test_reports_come_back_in_order_and_the_file_goes_once_all_are_acknowledged(
    tmp_path: Path,
) -> None:
    spool = Spool(spool_path(tmp_path, "r1", 3), run="r1", rank=3)
    assert spool.append(lines(range(0, 5))) == 5
    assert spool.append(lines(range(5, 8))) == 3
    first, end = spool.read(max_reports=4, max_bytes=1 << 20)
    assert steps_of(first) == [0, 1, 2, 3]
    spool.ack(end)
    rest, end = spool.read(max_reports=100, max_bytes=1 << 20)
    assert steps_of(rest) == [4, 5, 6, 7]
    assert spool.path.exists()
    spool.ack(end)
    assert not spool.path.exists() and spool.pending_bytes == 0
    assert spool.append(lines(range(8, 9))) == 1  # a new file, with its header
    assert json.loads(spool.path.read_bytes().splitlines()[0]) == {
        "entmon_spool": 1,
        "run": "r1",
        "rank": 3,
    }


def test_unacknowledged_reports_survive_the_process_and_a_torn_tail_is_cut(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "r1", 0)
    spool = Spool(path, run="r1")
    spool.append(lines(range(3)))
    batch, end = spool.read(max_reports=1, max_bytes=1 << 20)
    spool.ack(end)  # step 0 acknowledged, but only in memory
    spool.close()
    with path.open("ab") as f:
        f.write(b'{"step": 3, "sta')  # the crash came in the middle of an append
    again = Spool(path)  # as `entmon replay` opens it: run and rank from the header
    again.open(create=False)
    assert (again.run, again.rank) == ("r1", 0)
    assert again.append(lines(range(4, 5))) == 1
    batch, _ = again.read(max_reports=100, max_bytes=1 << 20)
    assert steps_of(batch) == [0, 1, 2, 4]  # step 0 again (idempotent), no torn line


def test_a_second_process_cannot_open_a_spool_in_use(tmp_path: Path) -> None:
    path = spool_path(tmp_path, "r1", 0)
    first = Spool(path, run="r1")
    first.append(lines(range(1)))
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(path, run="r1").open()
    first.close()
    Spool(path, run="r1").open()  # free again


def test_a_file_that_is_not_a_spool_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"step": 1}\n')
    with pytest.raises(SpoolError, match="not an entmon spool file"):
        Spool(path).open(create=False)
    other = spool_path(tmp_path, "r1", 0)
    writer = Spool(other, run="r1")
    writer.append(lines(range(1)))
    writer.close()
    with pytest.raises(SpoolError, match="holds run 'r1', not 'r2'"):
        Spool(other, run="r2").open()


def test_the_bound_refuses_what_does_not_fit_after_compacting_acknowledged_reports(
    tmp_path: Path,
) -> None:
    spool = Spool(spool_path(tmp_path, "r1", 0), run="r1")
    spool.open()
    one = len(lines(range(100, 101))[0]) + 1  # steps of three digits: every line is as long
    spool.max_bytes = spool.path.stat().st_size + 9 * one  # the header and 9 reports
    assert spool.append(lines(range(100, 108))) == 8
    assert spool.append(lines(range(108, 116))) == 1
    _, end = spool.read(max_reports=5, max_bytes=1 << 20)
    spool.ack(end)  # steps 100-104 stored: their room comes back
    assert spool.append(lines(range(116, 130))) == 5
    assert spool.path.stat().st_size <= spool.max_bytes
    rest, _ = spool.read(max_reports=100, max_bytes=1 << 20)
    assert steps_of(rest) == [105, 106, 107, 108, 116, 117, 118, 119, 120]


def test_a_report_longer_than_the_read_size_is_read_alone(tmp_path: Path) -> None:
    spool = Spool(spool_path(tmp_path, "r1", 0), run="r1")
    big = json.dumps({"step": 0, "user": {"x" * 5000: 1.0}}).encode()
    spool.append([big, *lines(range(1, 3))])
    batch, end = spool.read(max_reports=100, max_bytes=1000)
    assert batch == [big]
    spool.ack(end)
    batch, _ = spool.read(max_reports=100, max_bytes=1000)
    assert steps_of(batch) == [1, 2]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, so that the disk fills up for real (needs root and mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_leaves_only_whole_reports_and_the_next_append_starts_clean(
    small_disk: Path,
) -> None:
    spool = Spool(spool_path(small_disk, "r1", 0), run="r1")
    batch = [json.dumps({"step": s, "stats": {}, "pad": "x" * 1000}).encode() for s in range(20)]
    written: list[int] = []  # the steps the spool says it kept
    with pytest.raises(SpoolWriteError) as refused:
        while True:  # until the disk is full
            spool.append(batch)
            written += steps_of(batch)
    written += steps_of(batch)[: refused.value.written]
    data = spool.path.read_bytes()
    assert data.endswith(b"\n")  # cut back to the last whole report
    rest, end = spool.read(max_reports=1 << 20, max_bytes=1 << 30)
    assert steps_of(rest) == written
    spool.ack(end)  # everything stored: the file goes, and room comes back
    assert spool.append(lines(range(1000, 1003))) == 3
    batch2, _ = spool.read(max_reports=100, max_bytes=1 << 20)
    assert steps_of(batch2) == [1000, 1001, 1002]
