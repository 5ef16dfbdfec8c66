"""The disk spool: reports the monitor has not acknowledged, kept in order until it has.

One append-only JSON-lines file per (run, rank): a header line naming the run, then one encoded
report per line. Batches are appended and fdatasync'ed as a whole; replay reads from the first
unacknowledged line and the file is deleted once everything in it was acknowledged. A crash can
leave acknowledged lines behind; replaying them is harmless because the service is idempotent
per (run, rank, step). An exclusive flock keeps two processes out of one file.

The file is bounded: when an append would pass `max_bytes`, the acknowledged prefix is compacted
away first, and what still does not fit is refused (the caller counts it as dropped).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from client.errors import EntmonError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, one process per spool is then on the user
    fcntl = None  # type: ignore[assignment]

SPOOL_FORMAT = 1
DEFAULT_SPOOL_MAX_BYTES = 256 << 20
SPOOL_DIR_ENV = "ENTMON_SPOOL_DIR"
COPY_CHUNK_BYTES = 1 << 20


class SpoolError(EntmonError):
    """The spool file cannot be used (held by another process, not a spool, unwritable)."""


class SpoolWriteError(SpoolError):
    """An append failed part-way (disk full, I/O error): the file was cut back to its last whole
    report; the first `written` lines of the batch are on disk, the rest are not."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


def default_spool_dir() -> Path:
    return Path(os.environ.get(SPOOL_DIR_ENV) or Path.home() / ".entmon" / "spool")


def spool_path(spool_dir: str | os.PathLike[str], run: str, rank: int) -> Path:
    return Path(spool_dir) / f"{run}.rank{rank}.jsonl"


def dead_letter_path(spool: str | os.PathLike[str]) -> Path:
    """Where reports the monitor keeps refusing are set aside: beside the spool, in the same
    format (`entmon replay` sends them once the monitor is fixed)."""
    path = Path(spool)
    return path.with_name(path.name.removesuffix(".jsonl") + ".dead.jsonl")


def _sync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


class Spool:
    """Not thread-safe: one thread (the reporter's, or `entmon replay`) owns it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run: str | None = None,
        rank: int = 0,
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
    ) -> None:
        self.path = Path(path)
        self.run = run
        self.rank = rank
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0  # bytes in the file
        self._head = 0  # offset of the first report line (after the header)
        self._read = 0  # offset of the first unacknowledged line

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self, *, create: bool = True) -> None:
        """Lock the file (creating it if `create`); raises SpoolError. With `run` unset, the
        file must exist and its header names the run."""
        if self._fd is not None:
            return
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags |= os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as e:
            raise SpoolError(f"cannot open spool {self.path}: {e}") from e
        try:
            self._lock(fd)
            self._fd = fd
            self._load()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _lock(self, fd: int) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise SpoolError(
                f"spool {self.path} is in use by another process (another Monitor for this run "
                "and rank, or `entmon replay`); close it first"
            ) from e
        with contextlib.suppress(OSError):  # deleted or replaced between open and lock
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                return
        raise SpoolError(f"spool {self.path} was replaced while opening it; try again")

    def _load(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        first = self._line_at(0, size)
        if size and not first.endswith(b"\n") and self.run is not None:
            os.ftruncate(self._fd, 0)  # torn header: the crash came before any report
            size = 0
        if size == 0:
            if self.run is None:
                raise SpoolError(f"{self.path} is empty: nothing to replay")
            fresh = {"entmon_spool": SPOOL_FORMAT, "run": self.run, "rank": self.rank}
            self._size = 0
            try:
                self._write(json.dumps(fresh, separators=(",", ":")).encode() + b"\n")
            except _TornWrite as e:
                raise SpoolError(f"cannot write the spool {self.path}: {e.cause}") from e.cause
            self._head = self._read = self._size
            return
        header = _parse_header(first, self.path)
        if self.run is None:
            self.run, self.rank = str(header["run"]), int(header.get("rank", 0))
        elif header["run"] != self.run:
            raise SpoolError(f"{self.path} holds run {header['run']!r}, not {self.run!r}")
        self._head = self._read = len(first)
        self._size = size
        self._repair_tail()

    def _repair_tail(self) -> None:
        """A crash in the middle of an append leaves a line with no newline: cut it off, or the
        next append would glue a good report onto it."""
        assert self._fd is not None
        if self._size == self._head or os.pread(self._fd, 1, self._size - 1) == b"\n":
            return
        pos = self._size
        while pos > self._head:
            start = max(self._head, pos - COPY_CHUNK_BYTES)
            chunk = os.pread(self._fd, pos - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                pos = start + cut + 1
                break
            pos = start
        os.ftruncate(self._fd, pos)
        self._size = pos

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        """Bytes of reports not acknowledged yet (0 when the file is closed)."""
        return self._size - self._read if self._fd is not None else 0

    # -- writing -------------------------------------------------------------------------------
    def append(self, lines: list[bytes]) -> int:
        """Append whole lines and sync them to disk; returns how many fit (in order) under
        `max_bytes`. Raises SpoolWriteError when the disk refuses part of them."""
        if not lines:
            return 0
        self.open()
        need = sum(len(line) + 1 for line in lines)
        if self._size + need > self.max_bytes and self._read > self._head:
            self._compact()
        room = self.max_bytes - self._size
        fit, used = 0, 0
        for line in lines:
            if used + len(line) + 1 > room:
                break
            used += len(line) + 1
            fit += 1
        if fit:
            try:
                self._write(b"".join(line + b"\n" for line in lines[:fit]))
            except _TornWrite as e:
                raise SpoolWriteError(
                    f"cannot write the spool {self.path}: {e.cause}", e.records
                ) from e.cause
        return fit

    def _write(self, data: bytes) -> None:
        """Write and sync `data` (whole lines). On any failure the file is cut back to its last
        whole line, so the next append never glues a report onto a torn one."""
        assert self._fd is not None
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, memoryview(data)[done:])
            _sync(self._fd)
        except OSError as e:
            # A partial write keeps its whole lines (when they can be synced); nothing else.
            keep = data.rfind(b"\n", 0, done) + 1
            try:
                os.ftruncate(self._fd, self._size + keep)
                _sync(self._fd)
            except OSError:
                keep = 0
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            self._size += keep
            raise _TornWrite(e, data.count(b"\n", 0, keep)) from e
        self._size += len(data)

    def _compact(self) -> None:
        """Rewrite the file without its acknowledged prefix (a new, locked inode)."""
        assert self._fd is not None
        tmp = self.path.with_name(self.path.name + ".compact")
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = os.pread(self._fd, self._head, 0)
            os.write(fd, header)
            pos = self._read
            while pos < self._size:
                chunk = os.pread(self._fd, min(COPY_CHUNK_BYTES, self._size - pos), pos)
                os.write(fd, chunk)
                pos += len(chunk)
            _sync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = self._head + (self._size - self._read)
        self._read = self._head

    # -- reading -------------------------------------------------------------------------------
    def read(self, *, max_reports: int, max_bytes: int) -> tuple[list[bytes], int]:
        """The next unacknowledged lines (at least one if any is pending, even a long one) and
        the offset to `ack` once the monitor has them."""
        if self._fd is None or self._read >= self._size:
            return [], self._read
        pos = self._read
        data = os.pread(self._fd, min(max_bytes, self._size - pos), pos)
        cut = data.rfind(b"\n")
        if cut < 0:  # one report longer than max_bytes: it goes alone
            data = self._line_at(pos, self._size)
            cut = len(data) - 1
        raw = data[:cut].split(b"\n")[:max_reports]
        end = pos + sum(len(line) + 1 for line in raw)
        return [line for line in raw if line.strip()], end

    def ack(self, end: int) -> None:
        """Everything before `end` is stored by the monitor; the file goes once all of it is."""
        assert self._fd is not None
        self._read = max(self._read, end)
        if self._read >= self._size:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.close()
            self._size = self._head = self._read = 0

    def _line_at(self, pos: int, size: int) -> bytes:
        """The line starting at `pos`, newline included (or up to `size` if none)."""
        assert self._fd is not None
        parts: list[bytes] = []
        while pos < size:
            chunk = os.pread(self._fd, min(COPY_CHUNK_BYTES, size - pos), pos)
            nl = chunk.find(b"\n")
            if nl >= 0:
                parts.append(chunk[: nl + 1])
                break
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts)


class _TornWrite(Exception):
    def __init__(self, cause: OSError, records: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.records = records  # whole lines of the failed write kept on disk


def _parse_header(line: bytes, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or "entmon_spool" not in header or "run" not in header:
        raise SpoolError(f"{path} is not an entmon spool file (no header line)")
    if header["entmon_spool"] != SPOOL_FORMAT:
        raise SpoolError(f"{path}: spool format {header['entmon_spool']} is not supported")
    return header
