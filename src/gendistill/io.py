"""File helpers shared by every sub-package: locating ``shared/data``, reading (gzip) JSONL with errors that name
the file and line, and atomic writes (temp file + ``os.replace``) so that an interrupted run never leaves a
half-written result behind."""

from __future__ import annotations

import ctypes
import errno
import functools
import gzip
import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from gendistill.errors import DataError
from gendistill.ownership import file_mode, temp_sibling

DATA_ENV = "GENDISTILL_DATA_DIR"
#: How to provide the data folder when :func:`data_dir` finds none: one wording in every error that needs it.
DATA_HINT = f"set {DATA_ENV}, or place shared/data beside the working folder (../shared/data)"


def data_dir() -> Path | None:
    """The benchmark folder: ``$GENDISTILL_DATA_DIR``, else ``<repo>/../shared/data``, else None."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    # src/gendistill/io.py -> repo root is parents[2]
    for root in (here.parents[2], Path.cwd()):
        cand = root.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return None


def open_text(path: Path):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line; a malformed line raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file in the same folder and ``os.replace``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    )


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``: readers see the old file
    or the whole new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, file_mode())  # mkstemp creates 0600; a result file is as readable as any other (umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def portable_command(argv: list[str]) -> str:
    """A command line as recorded in a committed result: shell-quoted, every absolute path cut to its last part
    (``/tmp/run7/out.json`` -> ``out.json``: where a file lay on the machine that ran it means nothing to a reader,
    and committed JSON carries no machine paths)."""

    def part(a: str) -> str:
        key, eq, value = a.partition("=") if a.startswith("--") else ("", "", a)
        if os.path.isabs(value):
            value = Path(value).name or value
        return shlex.quote(key + eq + value)

    return " ".join(part(a) for a in argv)


#: an absolute path inside a string: two or more ``/name`` parts not preceded by a word character, ``:`` or ``/``
#: (so ``tok/s``, ``3/4`` and the path part of ``https://host/a/b`` are not paths)
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])(?:/[\w.+-]+){2,}/?")


def portable_paths(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every absolute path inside its strings cut to its
    last part, the rule of :func:`portable_command`: for a result copied into ``docs/results`` from the machine that
    produced it (``python tools/portable_results.py FILE``)."""
    if isinstance(value, dict):
        return {portable_paths(k): portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(lambda m: Path(m.group(0).rstrip("/")).name, value)
    return value


def absolute_paths(value: Any) -> set[str]:
    """Every absolute path inside the strings of a JSON-like ``value`` (what :func:`portable_paths` would cut)."""
    if isinstance(value, dict):
        return set().union(*(absolute_paths(k) | absolute_paths(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(absolute_paths(v) for v in value))
    return {m.group(0) for m in ABSOLUTE_PATH.finditer(value)} if isinstance(value, str) else set()


def write_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failing write raises (disk full, quota, file too large, read-only): ``OSError`` and
    safetensors' ``SafetensorError``, which wraps the same OS error in its own type."""
    return (OSError, SafetensorError)


_OS_ERROR_RE = re.compile(r"(?:I/O error: |IoError\()?(?P<text>[^()]*?)\s*\(os error (?P<code>\d+)\)")


def write_error_text(exc: BaseException) -> str:
    """A short description of a failed write (``No space left on device``), whatever raised it."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = _OS_ERROR_RE.search(text)
    if m:
        return os.strerror(int(m.group("code")))
    return text[:200]


#: a full disk, a quota, a size limit, a read-only file system: errors of the place being written, not bugs
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def storage_error_line(exc: BaseException) -> str | None:
    """One line for a write that failed because the storage refused it (full, over quota or read-only), from an
    ``OSError`` or a safetensors error wrapping one; None for anything else (a bug keeps its traceback)."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and not isinstance(exc, OSError):
        m = _OS_ERROR_RE.search(str(exc))
        code = int(m.group("code")) if m and type(exc).__name__ == "SafetensorError" else None
    if code not in STORAGE_ERRNOS:
        return None
    where = f" {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
    return f"cannot write{where}: {os.strerror(code)}"


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def publish_dir(tmp: str | Path, final: str | Path, replace: bool = True) -> Path:
    """Make the fully written folder ``tmp`` appear as ``final`` atomically and durably: every file in ``tmp`` is
    given the umask's mode (:func:`gendistill.ownership.file_mode`; safetensors, and so ``save_pretrained``, creates
    its files 0600 whatever the umask) and fsynced, an existing ``final`` is renamed aside (never deleted before the
    new one is in place; an exception or Ctrl-C between the two renames puts it back), and the parent folder is
    fsynced after the rename. A crash at any point leaves either the old folder or the new one (a kill between the
    renames leaves the old one aside, which :func:`gendistill.ownership.clean_stale_temps` renames back). The folders
    published this way (students, checkpoints) hold data files only.

    With ``replace=False`` publishing is exclusive: if ``final`` exists (it may have appeared while ``tmp`` was being
    written, e.g. by a second run into the same folder) :class:`FileExistsError` is raised and nothing is touched."""
    tmp, final = Path(tmp), Path(final)
    mode = file_mode()
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                if not p.is_symlink():
                    os.fchmod(fh.fileno(), mode)
                os.fsync(fh.fileno())
    if not replace:
        _rename_noreplace(tmp, final)
        _fsync_dir(final.parent)
        return final
    old = None
    try:
        if final.exists():
            old = temp_sibling(final, "old")
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:  # Ctrl-C or an error between the two renames: the previous folder goes back in place
        if old is not None and os.path.lexists(old) and not os.path.lexists(final):
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``rename(src, dst)`` that fails with FileExistsError if ``dst`` exists (Linux ``renameat2(RENAME_NOREPLACE)``;
    elsewhere a check right before the rename)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "renameat2"):
        at_fdcwd, rename_noreplace = -100, 1
        if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, os.strerror(err), str(dst))
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
