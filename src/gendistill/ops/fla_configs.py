"""Tuned launch configurations for fla's Triton kernels, shipped with gendistill so a fresh GPU skips autotuning.

fla autotunes each of its KDA kernels on first use: every candidate configuration is compiled and timed, which on
a fresh H200 takes minutes before the first training step (forward + backward). fla can instead read the chosen
configuration of each kernel from ``$FLA_CONFIG_DIR/<kernel>.json`` (``FLA_CACHE_MODE``: ``fuzzy`` = exact key
first, then any key of the same structure, else Triton's autotuning as before). Then each kernel compiles once.

* :func:`activate` points fla at the configurations shipped for this GPU (``ops/fla_configs/<GPU name>/``) unless the
  user set ``FLA_CONFIG_DIR`` or ``FLA_CACHE_MODE`` already, or ``GENDISTILL_FLA_CONFIGS=0``. It must run before fla is
  imported (fla reads the variables at import); :func:`gendistill.ops.kda.fla_available` calls it.
* :func:`dump_autotuned` writes the configurations fla's autotuners chose in this process, in fla's file format
  (``python benchmarks/train_throughput.py --dump-fla-configs DIR`` on a new kind of GPU, then copy DIR here).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

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
    import torch  # noqa: PLC0415

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
    from triton.runtime.autotuner import Autotuner  # noqa: PLC0415

    seen: dict[int, Any] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("fla.") or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if isinstance(obj, Autotuner) and id(obj) not in seen:
                seen[id(obj)] = obj
    return list(seen.values())


def dump_autotuned(out_dir: str | Path) -> dict[str, int]:
    """Write ``<kernel>.json`` for every fla kernel autotuned in this process into ``out_dir``, merging with files
    already there. Returns ``{kernel: number of keys}``."""
    import triton  # noqa: PLC0415
    from fla.ops.utils.cache import AutotuneKey  # noqa: PLC0415

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for tuner in _autotuners():
        if not tuner.cache:
            continue
        fn = tuner.fn
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "kernel")
        path = out / f"{name}.json"
        doc = json.loads(path.read_text()) if path.exists() else {"kernel_name": name, "autotune_entries": {}}
        doc["triton_version"] = triton.__version__
        entries = doc.setdefault("autotune_entries", {})
        for key, cfg in tuner.cache.items():
            entries[AutotuneKey.key_hash(key)] = {"autotune_key": AutotuneKey.normalize_autotune_key(list(key)),
                                                  "config": _config_dict(cfg)}
        common = Counter(json.dumps(e["config"], sort_keys=True) for e in entries.values()).most_common(1)
        doc["default_config"] = json.loads(common[0][0])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        counts[name] = len(entries)
    return counts
