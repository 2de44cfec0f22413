"""What gendistill may replace or delete, and where it may write.

Every folder the project creates as a whole (a distillation run folder, a saved student) holds a marker file,
:data:`MARKER` (a small JSON object naming what wrote it). ``--overwrite`` replaces a folder only when it carries that
marker, and never the working folder, one of its parents, the home folder, the file-system root or a git
repository, whatever it holds. Anything else is refused with one line (:class:`OutputError`), before any model is
loaded, so that nothing a user types can delete files the project did not write.

:func:`check_writable` probes an output location once, up front, so that a read-only or missing location is one
line before the expensive work instead of a traceback after it. :func:`clean_stale_temps` removes the hidden
temporary siblings (``.<name>.tmp-<pid>-...``) that a killed writer left behind, but only those of dead processes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gendistill.errors import GendistillError
from gendistill.version import __version__

MARKER = ".gendistill.json"
#: the lock file of a folder being written (:mod:`gendistill.runlock`)
LOCK = ".gendistill.lock"
KINDS = ("run", "student", "select", "report")


class OutputError(GendistillError):
    """An output location cannot be written, or may not be replaced."""


def write_marker(folder: str | Path, kind: str, files: list[str] | tuple[str, ...] | None = None,
                 created: float | None = None) -> Path:
    """Mark ``folder`` as written by gendistill (``kind``: ``"run"``, ``"student"`` or ``"select"``, a
    ``select-layers`` run; ``"report"``, a folder an ``eval``/``bench`` report was written into). ``files`` are the
    names (shell patterns, relative to the folder) of the report files gendistill claims there
    (:func:`claim_report_folder`); ``created`` keeps an earlier marker's time. Written atomically (a temporary file
    renamed over the marker), so a kill or a full disk never leaves an empty or cut-off marker."""
    assert kind in KINDS, kind
    path = Path(folder) / MARKER
    data: dict = {"written_by": "gendistill", "kind": kind, "version": __version__,
                  "created": round(time.time(), 3) if created is None else created}
    if files is not None:
        data["files"] = list(files)
    text = json.dumps(data) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _read_marker(folder: str | Path) -> tuple[bytes | None, Any]:
    """``folder``'s marker file: its bytes (None when there is none) and their JSON (None when not JSON)."""
    try:
        raw = (Path(folder) / MARKER).read_bytes()
    except OSError:
        return None, None
    try:
        return raw, json.loads(raw)
    except ValueError:
        return raw, None


def _is_marker(data: Any) -> bool:
    return isinstance(data, dict) and data.get("written_by") == "gendistill" and data.get("kind") in KINDS


def marker_data(folder: str | Path) -> dict | None:
    """``folder``'s marker as a mapping when it is a valid gendistill marker, else None."""
    data = _read_marker(folder)[1]
    return data if _is_marker(data) else None


def is_bookkeeping(name: str) -> bool:
    """Files that say nothing about a folder's content: the lock file (:mod:`gendistill.runlock`) and the
    temporaries of an interrupted marker write. A folder holding only these counts as empty."""
    return name == LOCK or (name.startswith(f"{MARKER}.") and name.endswith(".tmp"))


def _content(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not is_bookkeeping(p.name)]


def _inferred_kind(folder: Path) -> str | None:
    """The kind of a folder whose marker is damaged (empty or cut off: written by a gendistill before markers were
    written atomically and killed meanwhile), judged from what gendistill keeps in it."""
    names = {p.name for p in _content(folder)} - {MARKER}
    if "progress.json" in names or "recipe.yaml" in names or not names:
        return "run" if "config.json" not in names else None
    if "config.json" in names and any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json")
                                      for n in names):
        return "student"
    return None


def marker_kind(folder: str | Path) -> str | None:
    """The kind recorded in ``folder``'s marker, or None when the folder carries no (valid) marker. A marker that
    exists but is damaged (0 bytes or cut off, as a kill during a non-atomic write left it) counts as ours when
    the folder's content says which kind it is (a run: ``progress.json``/``recipe.yaml``; a student:
    ``config.json`` and safetensors weights); the next run rewrites it."""
    raw, data = _read_marker(folder)
    if raw is None:
        return None
    if _is_marker(data):
        return data["kind"]
    if data is not None:
        return None  # valid JSON, but not our marker
    stripped = raw.strip()
    if stripped and not stripped.startswith(b"{"):
        return None  # not a cut-off JSON object: someone else's file of that name
    return _inferred_kind(Path(folder))


def _protected_reason(folder: Path) -> str | None:
    """Why ``folder`` may never be replaced whatever it holds, or None."""
    real = folder.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd:
        return "it is the current working folder"
    if real in cwd.parents:
        return "it contains the current working folder"
    home = Path.home().resolve()
    if real == home or real in home.parents:
        return "it is the home folder or one of its parents"
    if real == Path(real.anchor):
        return "it is the file-system root"
    if (real / ".git").exists():
        return "it is a git repository"
    return None


def check_replaceable(folder: str | Path, kind: str, what: str) -> None:
    """Raise :class:`OutputError` unless the existing ``folder`` may be deleted by ``--overwrite``: it carries our
    marker of ``kind`` and is not a protected location. ``what`` names the option (``run.output_dir``, ``--out``)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise OutputError(f"{what}: {folder} is not a folder; --overwrite only replaces folders gendistill wrote")
    reason = _protected_reason(folder)
    if reason is not None:
        raise OutputError(f"{what}: refusing to overwrite {folder}: {reason}; choose a new folder")
    found = marker_kind(folder)
    if found is None and not _content(folder):
        return  # an empty folder (or one holding only a lock file): nothing to lose
    if found is None:
        raise OutputError(
            f"{what}: refusing to overwrite {folder}: it was not written by gendistill (no {MARKER}); "
            "delete it yourself or choose a new folder"
        )
    if found != kind:
        raise OutputError(f"{what}: refusing to overwrite {folder}: it holds a gendistill {found}, not a {kind}")


def remove_owned(folder: str | Path, kind: str, what: str) -> None:
    """Delete ``folder`` after :func:`check_replaceable` allowed it."""
    check_replaceable(folder, kind, what)
    if Path(folder).exists():
        shutil.rmtree(folder)


def clear_owned(folder: str | Path, kind: str, what: str) -> None:
    """Empty ``folder`` after :func:`check_replaceable` allowed it, keeping the folder itself, its lock file (held by
    the caller: removing it would let a second process lock a new one) and its marker (rewritten by the caller)."""
    check_replaceable(folder, kind, what)
    folder = Path(folder)
    for p in _content(folder):
        if p.name == MARKER:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


#: a marker without a ``files`` list (an older gendistill): a report file at most this much older than the marker is
#: taken for one the command wrote right after marking the folder (clock and file-system time granularity)
_MTIME_SLACK_S = 1.0


def _matches(rel: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(rel, n) for n in patterns)


def _report_files(folder: Path, names: tuple[str, ...]) -> list[str]:
    """The existing files of ``folder`` matching ``names`` (relative paths; a pattern with a ``/``, such as
    ``examples/*.jsonl``, looks into that sub-folder), sorted."""
    found = {p.name for p in folder.iterdir() if _matches(p.name, [n for n in names if "/" not in n])}
    for n in (n for n in names if "/" in n):
        found.update(str(p.relative_to(folder)) for p in folder.glob(n) if p.is_file() or p.is_symlink())
    return sorted(found)


def _recorded_as_ours(folder: Path, data: dict | None) -> Callable[[str], bool] | None:
    """Which existing files of a marked ``folder`` gendistill wrote: those matching the marker's ``files`` list; with
    a report marker of an older gendistill (no list) those not older than the marker (a file that was there before
    the folder was marked is the user's); in a folder another command owns (a run, a selection, a student: their
    markers list no files and are rewritten on every resume) every file, as before. None: the folder carries no
    marker. ``data``: the folder's :func:`marker_data`."""
    if data is None:
        # no marker, or a damaged one whose folder's content says it is ours (:func:`marker_kind`)
        return None if marker_kind(folder) is None else (lambda rel: True)
    if isinstance(data.get("files"), list):
        recorded = [str(f) for f in data["files"]]
        return lambda rel: _matches(rel, recorded)
    created = data.get("created")
    if data.get("kind") != "report" or not isinstance(created, (int, float)):
        return lambda rel: True

    def newer(rel: str) -> bool:
        try:
            return (folder / rel).lstat().st_mtime >= created - _MTIME_SLACK_S
        except OSError:
            return True
    return newer


def check_report_folder(folder: str | Path, names: tuple[str, ...], what: str,
                        earlier: Callable[[Path], bool] | None = None) -> None:
    """Raise :class:`OutputError` unless a command may write (or replace, or delete) its report files ``names`` in
    ``folder``: never the working folder, one of its parents, the home folder, the file-system root or a git
    repository; and ``folder`` must not already hold a file matching one of ``names`` (shell patterns such as
    ``bench_*.json`` or ``examples/*.jsonl``) that gendistill did not write. gendistill's files are those its marker
    records (:func:`claim_report_folder` lists the names each command claims; a marker of an older gendistill lists
    none, and then a matching file older than the marker is the user's). A missing folder, or one ``earlier(folder)``
    recognises as the command's own from before folders were marked, passes."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(f"{what}: {folder} is a file, not a folder")
    reason = _protected_reason(folder)
    if reason is not None:
        raise OutputError(f"{what}: refusing to write into {folder}: {reason}; choose a new folder")
    data = marker_data(folder)
    ours = _recorded_as_ours(folder, data)
    if (ours is None or (data is not None and "files" not in data)) and earlier is not None and earlier(folder):
        return
    clash = [rel for rel in _report_files(folder, names) if ours is None or not ours(rel)]
    if clash and ours is None:
        raise OutputError(f"{what}: refusing to overwrite {folder / clash[0]}: {folder} was not written by gendistill "
                          f"(no {MARKER}); move the file or choose a new folder")
    if clash:
        why = (f"its {MARKER} in {folder} does not list it" if data is not None and "files" in data
               else f"it is older than {folder}'s {MARKER}")
        raise OutputError(f"{what}: refusing to overwrite {folder / clash[0]}: gendistill did not write it ({why}); "
                          "move the file or choose a new folder")


def claim_report_folder(folder: str | Path, names: tuple[str, ...], what: str,
                        earlier: Callable[[Path], bool] | None = None) -> None:
    """:func:`check_report_folder` (again: call it under the folder's lock), then create ``folder``, mark it as a
    report folder unless it already carries a gendistill marker, and record ``names`` in the marker's ``files`` list
    (merged with what earlier commands claimed there). A marker of an older gendistill (no list) is left as it is."""
    check_report_folder(folder, names, what, earlier)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if marker_kind(folder) is None:
        write_marker(folder, "report", files=names)
        return
    data = marker_data(folder)
    if data is not None and isinstance(data.get("files"), list):
        merged = list(dict.fromkeys([*map(str, data["files"]), *names]))
        if merged != data["files"]:
            write_marker(folder, data["kind"], files=merged, created=data.get("created"))


def is_empty(folder: str | Path) -> bool:
    """True for a missing folder or one holding only bookkeeping files (a lock file)."""
    folder = Path(folder)
    return not folder.is_dir() or not _content(folder)


def check_writable(path: str | Path, what: str) -> None:
    """Raise :class:`OutputError` unless ``path`` (a folder, existing or not) can be created and written: the nearest
    existing ancestor must be a folder in which a file can be created. The probe file is removed again."""
    path = Path(path)
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise OutputError(f"{what}: cannot write {path}: {probe_dir} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gendistill-write-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what}: cannot write {path}: {e.strerror or e} ({probe_dir})") from None


def check_free_space(path: str | Path, need_bytes: int, what: str) -> None:
    """Raise :class:`OutputError` when the file system holding ``path`` has less than ``need_bytes`` free."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise OutputError(f"{what}: {path} needs about {_size(need_bytes)} but only {_size(free)} are free")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"  # pragma: no cover


def tensor_bytes(tensors) -> int:
    """Bytes the tensors take on disk (an upper bound for tied weights, which are stored once)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def temp_sibling(final: str | Path, tag: str = "tmp") -> Path:
    """A hidden sibling name for a folder being written: ``.<name>.<tag>-<pid>-<random>``."""
    final = Path(final)
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{os.urandom(4).hex()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(final: str | Path) -> list[Path]:
    """Remove hidden temporary siblings of ``final`` exactly as :func:`temp_sibling` names them
    (``.<name>.tmp-<pid>-<8 hex>``, ``.<name>.old-<pid>-<8 hex>``) whose writing process is gone; returns what was
    removed. Siblings of live processes (a concurrent writer) stay, and so does anything named otherwise (a user's
    ``.<name>.old-2023`` backup is not ours). When ``final`` itself is missing, a dead writer's ``.old-`` sibling is
    the previous folder that a publish killed between its two renames (:func:`gendistill.io.publish_dir`) set aside:
    it is renamed back to ``final`` (the newest, if several), not removed."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return []
    pat = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}$")
    stale = []
    for p in parent.iterdir():
        m = pat.match(p.name)
        if m and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2))):
            stale.append((m.group(1), p))
    if not os.path.lexists(final):
        olds = sorted((p for tag, p in stale if tag == "old"), key=lambda p: p.lstat().st_mtime)
        if olds:
            os.rename(olds[-1], final)  # the previous student comes back
            stale = [(tag, p) for tag, p in stale if p != olds[-1]]
    removed = []
    for _, p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def file_mode() -> int:
    """The mode a new file gets under the current umask (``0o644`` under umask 022)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old


__all__ = ["MARKER", "LOCK", "OutputError", "write_marker", "marker_data", "marker_kind", "is_bookkeeping",
           "is_empty", "check_replaceable", "remove_owned", "clear_owned", "check_report_folder", "claim_report_folder",
           "check_writable", "check_free_space", "tensor_bytes", "temp_sibling", "clean_stale_temps", "file_mode"]
