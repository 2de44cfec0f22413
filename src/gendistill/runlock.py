"""One writer per output folder.

A command that writes a folder for a long time (a ``distill`` run folder, an ``ablate`` grid, a ``select-layers``
run) holds an exclusive advisory lock (``flock``) on :data:`LOCK`, a small file inside that folder, from the moment
it starts writing until it ends. The kernel releases the lock when the process ends in any way (normal exit, an
exception, ``kill -9``, an out-of-memory kill), so a stale lock never blocks a rerun, and nothing has to be cleaned
up. A second process that wants the same folder fails at once with one line naming the process that holds it,
instead of interleaving its metrics, checkpoints and students with the first one's.

The lock file stays in the folder after the run (deleting it would let a process lock an unlinked file while
another creates a new one); it counts as bookkeeping, not content (:func:`gendistill.ownership.is_bookkeeping`).
Locks are advisory: they bind gendistill processes, not a user's own tools. On NFS, ``flock`` is mapped onto POSIX
byte-range locks, which work across hosts with NFSv4.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from gendistill.ownership import LOCK, MARKER, OutputError, is_bookkeeping


class FolderBusyError(OutputError):
    """Another gendistill process is writing the folder."""


def _holder(fd: int) -> str:
    """What the lock file says about the process holding it (pid, host, command, start time)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another gendistill process"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    host = f" on {info['host']}" if info.get("host") and info.get("host") != socket.gethostname() else ""
    cmd = f": {info['command']}" if info.get("command") else ""
    return f"gendistill process {info['pid']}{host}, started {when}{cmd}"


def _busy(folder: Path, fd: int, what: str) -> FolderBusyError:
    return FolderBusyError(f"{what}: {folder} is in use by {_holder(fd)}; wait for it to finish or choose another "
                           "folder")


def check_not_busy(folder: str | Path, what: str) -> None:
    """Raise :class:`FolderBusyError` when a process holds ``folder``'s lock. Writes nothing (a folder without a lock
    file is free): the early check, before anything expensive is loaded."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(Path(folder), fd, what) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class FolderLock:
    """An exclusive lock on a folder, held until :meth:`release` (or the process ends). A context manager."""

    def __init__(self, folder: Path, fd: int, created: bool):
        self.folder, self._fd, self.created = folder, fd, created

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self, remove_created: bool = False) -> None:
        """Unlock. ``remove_created``: the folder was created by :func:`acquire` and nothing else was written into
        it (a check under the lock failed): remove the lock file and the folder again, so a refused run leaves
        nothing behind."""
        if self._fd is None:
            return
        if remove_created and self.created:
            try:
                rest = [p for p in self.folder.iterdir() if not is_bookkeeping(p.name) and p.name != MARKER]
                if not rest:
                    (self.folder / LOCK).unlink(missing_ok=True)
                    (self.folder / MARKER).unlink(missing_ok=True)
                    self.folder.rmdir()
            except OSError:
                pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(folder: str | Path, what: str) -> FolderLock:
    """Create ``folder`` if needed and take its lock without waiting: :class:`FolderBusyError` (one line naming the
    holder) when another process has it. The lock file records this process (pid, host, command, start time) for
    that message."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise OutputError(f"{what}: cannot write {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        err = _busy(folder, fd, what)
        os.close(fd)
        raise err from None
    except OSError as e:  # a file system without locks: say so rather than run unprotected
        os.close(fd)
        raise OutputError(f"{what}: cannot lock {folder / LOCK}: {e.strerror or e}") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
            "command": " ".join(["gendistill", *sys.argv[1:]])[:300] if sys.argv else ""}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:
        pass  # the lock is what matters; the note only improves the second process's message
    return FolderLock(folder, fd, created)


__all__ = ["LOCK", "FolderBusyError", "FolderLock", "acquire", "check_not_busy"]
