"""A de-quantised GGUF teacher kept on disk as a plain Hugging Face folder, so that every later load skips the
de-quantisation: loading SmolLM2-135M-Instruct (Q4_1) took 14.8 s with an empty cache and 0.7 s from its entry on 2
CPU cores (``load_teacher("smollm2-135m-instruct", dtype=torch.bfloat16)`` twice); on the H200 lease of
docs/results.md section 10 every evaluation process paid 23-28 s for it.

* **Key**: SHA-256 of the GGUF file's bytes, with transformers' and the ``gguf`` package's versions and
  :data:`FORMAT` (another de-quantiser may give other numbers). The file's name and folder are not part of it.
* **Entry**: ``<root>/<key[:2]>/<key>/``: ``config.json`` and ``model.safetensors`` as ``save_pretrained`` writes them
  (float32, exactly the tensors transformers de-quantised), the tokenizer files, and :data:`ENTRY_FILE` (the key's
  parts). The folder is written aside and published atomically (:func:`gendistill.io.publish_dir`); two processes
  that convert the same file at once both succeed and the first entry stays.
* **Root**: ``$GENDISTILL_TEACHER_CACHE``, else ``$XDG_CACHE_HOME/gendistill/teachers``, else
  ``~/.cache/gendistill/teachers``; ``GENDISTILL_TEACHER_CACHE=off`` turns it off. gendistill never deletes an entry
  (remove the folder yourself to reclaim the space: about 4 bytes per parameter).
* A damaged entry is a miss with one warning (the teacher is de-quantised again and the entry replaced); a cache that
  cannot be written is one warning and the load goes on.

``tests/test_teacher_cache.py`` checks that a teacher read from its entry is the de-quantised one: every parameter and
buffer bitwise, in float32 and bfloat16, the same config and the same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from gendistill.io import publish_dir

logger = logging.getLogger(__name__)

ENV = "GENDISTILL_TEACHER_CACHE"
FORMAT = "1"
ENTRY_FILE = "gendistill-teacher.json"
_OFF = {"off", "0", "none", "false", "no"}


def cache_root() -> Path | None:
    """The cache's folder, or None when ``$GENDISTILL_TEACHER_CACHE`` turns it off."""
    env = os.environ.get(ENV)
    if env is not None and env.strip().lower() in _OFF:
        return None
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gendistill" / "teachers"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def key_parts(gguf: Path) -> dict[str, str]:
    """What the entry of ``gguf`` is keyed by (also written into the entry)."""
    h = hashlib.sha256()
    with open(gguf, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return {"gguf_sha256": h.hexdigest(), "transformers": _version("transformers"), "gguf": _version("gguf"),
            "format": FORMAT}


def entry_dir(root: Path, parts: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return root / key[:2] / key


def lookup(gguf: Path) -> tuple[Path | None, Path | None, dict[str, str]]:
    """``(entry or None, the entry's folder or None when the cache is off, key parts)`` for ``gguf``: the entry is
    returned only when it is complete (its :data:`ENTRY_FILE` matches the key)."""
    root = cache_root()
    if root is None:
        return None, None, {}
    parts = key_parts(gguf)
    d = entry_dir(root, parts)
    try:
        if json.loads((d / ENTRY_FILE).read_text(encoding="utf-8")) == parts:
            return d, d, parts
    except (OSError, ValueError):
        if d.exists():
            logger.warning("teacher cache entry %s is incomplete or damaged; de-quantising again", d)
    return None, d, parts


def store(folder: Path, parts: dict[str, str], model: Any, tokenizer: Any | None, replace: bool = False) -> bool:
    """Write ``model`` (float32) and ``tokenizer`` as the entry ``folder``; False (with one warning) when the cache
    cannot be written. ``replace``: a damaged entry is replaced; otherwise an entry that appeared meanwhile stays."""
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name[:12]}.", suffix=".tmp", dir=folder.parent))
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / ENTRY_FILE).write_text(json.dumps(parts, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        publish_dir(tmp, folder, replace=replace)
        tmp = None
        logger.info("teacher cache: wrote %s", folder)
        return True
    except FileExistsError:
        return True  # another process published the same entry first
    except Exception as exc:  # noqa: BLE001 — any failure to cache is a warning, never a failed load
        logger.warning("teacher cache: cannot write %s (%s: %s); the teacher is loaded without it", folder,
                       type(exc).__name__, exc)
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
