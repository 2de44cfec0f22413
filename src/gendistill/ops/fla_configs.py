"""Tuned launch configurations for fla's Triton kernels, shipped with gendistill so a fresh GPU skips autotuning.

fla autotunes each of its KDA kernels on first use: every candidate configuration is compiled and timed, which on
a fresh H200 takes minutes before the first training step (forward + backward). fla can instead read the chosen
configuration of each kernel from ``$FLA_CONFIG_DIR/<kernel>.json`` (``FLA_CACHE_MODE``: ``fuzzy`` = exact key
first, then any key of the same structure, else Triton's autotuning as before). Then each kernel compiles once.

* :func:`activate` points fla at the configurations shipped for this GPU (``ops/fla_configs/<GPU name>/``) unless the
  user set ``FLA_CONFIG_DIR`` or ``FLA_CACHE_MODE`` already, or ``GENDISTILL_FLA_CONFIGS=0``. It must run before fla is
  imported (fla reads the variables at import); :func:`gendistill.ops.backend.fla_available` calls it.
* :func:`dump_autotuned` writes the configurations fla's autotuners chose in this process, in fla's file format
  (``python benchmarks/train_throughput.py --dump-fla-configs DIR`` on a new kind of GPU, then copy DIR here);
  :func:`parse_autotune_log` recovers the same from the log of any run made with ``TRITON_PRINT_AUTOTUNING=1``
  (``python tools/fla_configs_from_log.py LOG DIR``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

SHIPPED = Path(__file__).with_name("fla_config_files")


def gpu_dir_name(device_name: str) -> str:
    """fla's own folder name for a GPU (``NVIDIA H200`` -> ``NVIDIA_H200``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", device_name).strip("_") or "unknown_gpu"


def shipped_dir(device_name: str) -> Path | None:
    d = SHIPPED / gpu_dir_name(device_name)
    return d if d.is_dir() and any(d.glob("*.json")) else None


def activate() -> Path | None:
    """Set ``FLA_CONFIG_DIR`` / ``FLA_CACHE_MODE`` for this GPU's shipped configurations. Returns the folder used, or
    None (no CUDA, nothing shipped for this GPU, the user chose otherwise, or fla was imported already)."""
    if os.environ.get("GENDISTILL_FLA_CONFIGS", "1") == "0":
        return None
    if "FLA_CONFIG_DIR" in os.environ or "FLA_CACHE_MODE" in os.environ:
        return None
    if "fla.ops.utils.cache" in sys.modules:  # too late: fla read its settings at import
        return None
    if not torch.cuda.is_available():
        return None
    d = shipped_dir(torch.cuda.get_device_name(0))
    if d is None:
        return None
    os.environ["FLA_CONFIG_DIR"] = str(d)
    os.environ["FLA_CACHE_MODE"] = "fuzzy"
    return d


def _config_dict(cfg: Any) -> dict[str, Any]:
    return {
        "kwargs": dict(cfg.kwargs),
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
        "num_ctas": getattr(cfg, "num_ctas", 1),
        "maxnreg": getattr(cfg, "maxnreg", None),
    }


def _autotuners() -> list[Any]:
    """Every Triton autotuner in fla's loaded modules, also those wrapped by ``triton.heuristics`` (most KDA kernels
    are ``Heuristics(fn=Autotuner(...))``: the autotuner is found by following ``.fn``)."""
    from triton.runtime.autotuner import Autotuner  # noqa: PLC0415  (GPU only)

    seen: dict[int, Any] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("fla.") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            for _ in range(8):  # a short chain of decorators at most
                if isinstance(obj, Autotuner):
                    seen.setdefault(id(obj), obj)
                obj = getattr(obj, "fn", None)
                if obj is None:
                    break
    return list(seen.values())


def _kernel_name(tuner: Any) -> str:
    fn = tuner.fn
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "kernel")


def _key_hash(key: tuple) -> str:
    """fla's hash of an autotune key (``AutotuneKey.key_hash``): md5 of the key as compact, sorted JSON."""
    return hashlib.md5(json.dumps(list(key), separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def write_config_files(entries: list[tuple[str, tuple, dict[str, Any]]], out_dir: str | Path,
                       triton_version: str) -> dict[str, int]:
    """Write ``<kernel>.json`` in fla's format for ``entries`` ``(kernel name, autotune key, config dict)``, merging
    with files already in ``out_dir``; each file's ``default_config`` is its most common configuration. Returns
    ``{kernel: number of keys}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_kernel: dict[str, list[tuple[tuple, dict[str, Any]]]] = {}
    for name, key, cfg in entries:
        by_kernel.setdefault(name, []).append((key, cfg))
    counts: dict[str, int] = {}
    for name, items in sorted(by_kernel.items()):
        path = out / f"{name}.json"
        doc = json.loads(path.read_text()) if path.exists() else {"kernel_name": name, "autotune_entries": {}}
        doc["triton_version"] = triton_version
        table = doc.setdefault("autotune_entries", {})
        for key, cfg in items:
            table[_key_hash(key)] = {"autotune_key": list(key), "config": cfg}
        common = Counter(json.dumps(e["config"], sort_keys=True) for e in table.values()).most_common(1)
        doc["default_config"] = json.loads(common[0][0])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        counts[name] = len(table)
    return counts


def dump_autotuned(out_dir: str | Path) -> dict[str, int]:
    """Write ``<kernel>.json`` for every fla kernel autotuned in this process into ``out_dir``, merging with files
    already there. Returns ``{kernel: number of keys}``."""
    import triton  # noqa: PLC0415  (GPU only)

    entries = [(_kernel_name(t), tuple(key), _config_dict(cfg)) for t in _autotuners() for key, cfg in t.cache.items()]
    return write_config_files(entries, out_dir, triton.__version__)


_LOG_RECORD = re.compile(
    r"Triton autotuning for function (?P<name>\w+),\s*with key as (?P<key>\(.*?\)),\s*finished after [\d.]+s,\s*"
    r"best config selected: (?P<cfg>[^;]*);", re.S)


def parse_autotune_log(text: str) -> list[tuple[str, tuple, dict[str, Any]]]:
    """The choices Triton printed while autotuning (``TRITON_PRINT_AUTOTUNING=1``), as ``(kernel, key, config)``
    entries for :func:`write_config_files` — the same configurations an in-process :func:`dump_autotuned` writes,
    recovered from any run's log."""
    entries = []
    for m in _LOG_RECORD.finditer(text):
        key = ast.literal_eval(m["key"])
        fields = dict(part.split(": ", 1) for part in (p.strip() for p in m["cfg"].split(",")) if part)
        values = {k: ast.literal_eval(v) for k, v in fields.items()}
        meta = {k: values.pop(k) for k in ("num_warps", "num_ctas", "num_stages", "maxnreg") if k in values}
        entries.append((m["name"], tuple(key), {"kwargs": values, "num_warps": meta.get("num_warps", 4),
                                                "num_stages": meta.get("num_stages", 3),
                                                "num_ctas": meta.get("num_ctas", 1),
                                                "maxnreg": meta.get("maxnreg")}))
    return entries


def seed_plain_autotuners(folder: str | Path | None = None) -> int:
    """Hand the configurations in ``folder`` (default: ``$FLA_CONFIG_DIR``, which :func:`activate` sets) to the fla
    kernels that use Triton's plain autotuner, which does not read fla's files (the gated RMSNorm's kernels): each
    shipped key goes into that autotuner's in-process cache, so a launch with that key is not benchmarked (3-5 s
    a kernel on a fresh H200). Kernels of fla's own cache-aware autotuner read the files themselves and are left
    alone; a key not shipped is autotuned as before. Call after fla's kernel modules are imported. Returns the number
    of keys handed over (0 with ``GENDISTILL_FLA_CONFIGS=0`` or no folder)."""
    if os.environ.get("GENDISTILL_FLA_CONFIGS", "1") == "0":
        return 0
    folder = folder if folder is not None else os.environ.get("FLA_CONFIG_DIR")
    if not folder:
        return 0
    import triton  # noqa: PLC0415  (GPU only)
    from fla.ops.utils.cache import CachedAutotuner  # noqa: PLC0415  (same)

    seeded = 0
    for tuner in _autotuners():
        path = Path(folder) / f"{_kernel_name(tuner)}.json"
        if isinstance(tuner, CachedAutotuner) or not path.is_file():
            continue
        for entry in json.loads(path.read_text()).get("autotune_entries", {}).values():
            cfg = entry["config"]
            config = triton.Config(dict(cfg.get("kwargs", {})), num_warps=cfg.get("num_warps", 4),
                                   num_stages=cfg.get("num_stages", 3), num_ctas=cfg.get("num_ctas", 1),
                                   maxnreg=cfg.get("maxnreg"))
            tuner.cache.setdefault(tuple(entry["autotune_key"]), config)
            seeded += 1
    return seeded
