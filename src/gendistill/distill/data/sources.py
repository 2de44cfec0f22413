"""Reading one training-text source (a ``SourceConfig``) into documents ``(origin, record)``.

``origin`` says where a record came from (``file:line``, ``file[row]``, ``dataset[i]``), so every error about a record
is one line naming it. A source is read either

* as a stream (:meth:`Source.iter_records`: file order, lazily, nothing held), or
* as a random-access table (:meth:`Source.table`), for the full per-epoch shuffle. Saved and hub datasets are Arrow
  tables already; local files are read once through :func:`iter_file` (so malformed data fails with the same one-line
  errors) into ``datasets``' cache, keyed by the files' paths, sizes and modification times, and memory-mapped from
  there: a corpus is neither held in RAM nor re-parsed by every stage or run that reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gendistill.distill.config import SourceConfig
from gendistill.errors import DataError
from gendistill.io import iter_jsonl, open_text

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".txt", ".txt.gz")
_CACHE_FORMAT = 1  # bump when the cached rows change meaning


def iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(origin, record)`` for one local file; ``origin`` is ``file:line`` (or ``file[row]``)."""
    name = path.name
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            for lineno, rec in iter_jsonl(path):
                yield f"{path}:{lineno}", rec
        elif name.endswith((".json", ".json.gz")):
            with open_text(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: a .json data file must hold a list of records")
            for i, rec in enumerate(data):
                yield f"{path}[{i}]", rec
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq  # noqa: PLC0415  (parquet sources only)

            pf = pq.ParquetFile(path)
            row = 0
            for batch in pf.iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    yield f"{path}[{row}]", rec
                    row += 1
        elif name.endswith((".txt", ".txt.gz")):
            with open_text(path) as f:
                text = f.read()
            if text.strip():
                yield str(path), {"text": text}
        else:
            raise DataError(f"{path}: unsupported data file type (expected one of {', '.join(FILE_SUFFIXES)})")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: cannot read ({e})") from None


def is_saved_dataset(p: Path) -> bool:
    """A folder written by ``datasets``' ``save_to_disk``."""
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()


def _file_rows(name: str, files: str, limit: int | None, cache_format: int):
    """``datasets.Dataset.from_generator`` body: each record as its JSON text (one fixed schema whatever the records
    hold) and its origin. ``files`` is JSON: ``[[path as given, absolute path, size, mtime], ...]`` (a string, as
    ``datasets`` would shard a list argument; the last three and ``cache_format`` only key the cache)."""
    n = 0
    for f, *_ in json.loads(files):
        for origin, rec in iter_file(Path(f)):
            yield {"origin": origin, "record": json.dumps(rec, ensure_ascii=False, default=str)}
            n += 1
            if limit and n >= limit:
                return
    if n == 0:
        raise DataError(f"{name}: no documents (empty file or dataset)")


def _data_error_in(e: BaseException) -> DataError | None:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, DataError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


class RecordTable(Sequence):
    """Random access to rows ``[start, stop)`` of a ``datasets.Dataset`` as ``(origin, record)``, read on access.
    ``cached_files``: the rows are gendistill's cache of local files (``origin`` + JSON text columns)."""

    def __init__(self, ds: Any, name: str, start: int = 0, stop: int | None = None, cached_files: bool = False):
        self.ds, self.name, self.start, self.cached_files = ds, name, start, cached_files
        self.stop = len(ds) if stop is None else min(stop, len(ds))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _row(self, j: int, row: dict[str, Any]) -> tuple[str, Any]:
        if self.cached_files:
            return row["origin"], json.loads(row["record"])
        return f"{self.name}[{j}]", row

    def __getitem__(self, i: int) -> tuple[str, Any]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = self.start + i
        return self._row(j, self.ds[j])

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        j = self.start
        for batch in self.ds.select(range(self.start, self.stop)).iter(batch_size=1024):
            for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
                yield self._row(j, row)
                j += 1

    def slice(self, start: int, stop: int | None = None) -> RecordTable:
        """Rows ``[start, stop)`` of this view."""
        s = self.start + start
        e = self.stop if stop is None else min(self.stop, self.start + stop)
        return RecordTable(self.ds, self.name, s, e, self.cached_files)


class Source:
    """One configured source: where its records come from and how to read them."""

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg

    def local_files(self) -> list[Path] | None:
        """The data files of a local file or folder, sorted; None for a saved dataset folder or a hub id."""
        cfg = self.cfg
        p = Path(cfg.path)
        if cfg.hub or cfg.path.startswith("hf://"):
            return None
        if p.is_file():
            return [p]
        if p.is_dir():
            if is_saved_dataset(p):
                return None
            files = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(FILE_SUFFIXES))
            if not files:
                raise DataError(f"{p}: folder holds no data files ({', '.join(FILE_SUFFIXES)})")
            return files
        if "/" in cfg.path and not p.exists() and (cfg.path.startswith((".", "/")) or p.suffix):
            raise DataError(f"{p}: file not found")
        return None  # a hub id such as "org/name"

    def _dataset(self) -> Any:
        """A saved (``load_from_disk``) or hub (``load_dataset``, streamed when the source says so) dataset."""
        cfg = self.cfg
        import datasets  # noqa: PLC0415  (heavy: saved and hub datasets only)

        p = Path(cfg.path)
        if not cfg.hub and p.is_dir() and is_saved_dataset(p):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if cfg.split not in ds:
                    raise DataError(f"{cfg.path}: no split {cfg.split!r} (has {', '.join(ds)})")
                ds = ds[cfg.split]
            return ds
        name = cfg.path.removeprefix("hf://")
        try:
            return datasets.load_dataset(name, cfg.subset, split=cfg.split, streaming=cfg.streaming)
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"{cfg.path}: cannot load hub dataset (no network or no such dataset?): {type(e).__name__}: {first}"
            ) from None

    def iter_records(self) -> Iterator[tuple[str, Any]]:
        """All records in file order (at most ``limit``), lazily; DataError when there are none."""
        files = self.local_files()
        limit = self.cfg.limit
        n = 0
        it = (rec for f in files for rec in iter_file(f)) if files is not None else (
            (f"{self.cfg.path}[{i}]", rec) for i, rec in enumerate(self._dataset())
        )
        for item in it:
            yield item
            n += 1
            if limit and n >= limit:
                return
        if n == 0:
            raise DataError(f"{self.cfg.path}: no documents (empty file or dataset)")

    def table(self) -> RecordTable:
        """All records (at most ``limit``) with random access; DataError when there are none."""
        files = self.local_files()
        if files is None:
            ds = self._dataset()
            total = len(ds) if self.cfg.limit is None else min(self.cfg.limit, len(ds))
            if total == 0:
                raise DataError(f"{self.cfg.path}: no documents (empty dataset)")
            return RecordTable(ds, self.cfg.path, 0, total)
        return RecordTable(self._cache_files(files), self.cfg.path, cached_files=True)

    def _cache_files(self, files: list[Path]) -> Any:
        import datasets  # noqa: PLC0415  (heavy: imported where a source is cached through it)
        from datasets.exceptions import DatasetGenerationError  # noqa: PLC0415  (same)

        keys = []
        for f in files:
            st = f.stat()
            keys.append([str(f), str(f.resolve()), st.st_size, st.st_mtime_ns])
        quiet = datasets.is_progress_bar_enabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            return datasets.Dataset.from_generator(
                _file_rows,
                gen_kwargs={"name": self.cfg.path, "files": json.dumps(keys), "limit": self.cfg.limit,
                            "cache_format": _CACHE_FORMAT},
            )
        except DatasetGenerationError as e:
            err = _data_error_in(e)
            if err is None:
                raise
            raise DataError(str(err)) from None
        finally:
            if quiet:
                datasets.enable_progress_bars()
