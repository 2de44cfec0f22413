"""Tuned launch configurations for fla's Triton kernels, shipped with gendistill so a fresh GPU skips autotuning.

fla autotunes each of its KDA kernels on first use: every candidate configuration is compiled and timed, which on
a fresh H200 takes minutes before the first training step (forward + backward). fla can instead read the chosen
configuration of each kernel from ``$FLA_CONFIG_DIR/<kernel>.json``; :data:`CACHE_MODE` says which entries it takes.
Then each kernel of a shipped shape compiles once.

* :func:`activate` points fla at the configurations shipped for this GPU (``ops/fla_config_files/<GPU name>/``) unless
  the user set ``FLA_CONFIG_DIR`` or ``FLA_CACHE_MODE`` already, or ``GENDISTILL_FLA_CONFIGS=0``. It must run before
  fla is imported (fla reads the variables at import); :func:`gendistill.ops.backend.fla_available` calls it. A GPU
  with no folder of its own borrows the folder of a card of the same compute capability (:func:`choose_folder`;
  ``GENDISTILL_FLA_CONFIGS=exact`` turns borrowing off).
* :func:`dump_autotuned` writes the configurations fla's autotuners chose in this process, in fla's file format
  (``python benchmarks/train_throughput.py --dump-fla-configs DIR`` on a new kind of GPU, then copy DIR here);
  :func:`parse_autotune_log` recovers the same from the log of any run made with ``TRITON_PRINT_AUTOTUNING=1``
  (``python tools/fla_configs_from_log.py LOG DIR``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gendistill.errors import ConfigError

SHIPPED = Path(__file__).with_name("fla_config_files")

#: fla's ``FLA_CACHE_MODE`` for the shipped files: ``strict``, an entry only for exactly its key (the kernel's shape
#: parameters, e.g. heads and head dimensions, and its tensors' dtypes; no sequence length in the chunked KDA
#: kernels' keys, the number of 65,536-row blocks or the batch in the norms' and cumulative sums'), else Triton's
#: autotuning as without the files. Not ``fuzzy``, which takes any entry of the same key structure whatever its
#: numbers: a configuration is one of the autotuner's candidates, but not every candidate fits every shape (the
#: autotuner skips those that run out of shared memory), and on an H100 a float32 KDA prefill at head dimension 128
#: stopped with ``OutOfResources`` under ``fuzzy`` (the file's float32 entries were tuned at head dimension 64).
CACHE_MODE = "strict"


def gpu_dir_name(device_name: str) -> str:
    """fla's own folder name for a GPU (``NVIDIA H200`` -> ``NVIDIA_H200``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", device_name).strip("_") or "unknown_gpu"


def shipped_dir(device_name: str) -> Path | None:
    d = SHIPPED / gpu_dir_name(device_name)
    return d if d.is_dir() and any(d.glob("*.json")) else None


#: the card each shipped folder was tuned on: ``folder -> (compute capability, number of SMs)``
#: (``torch.cuda.get_device_properties``); a folder missing here is never borrowed by another card
TUNED_ON: dict[str, tuple[tuple[int, int], int]] = {
    "NVIDIA_H200": ((9, 0), 132),
}


@dataclass(frozen=True)
class ConfigChoice:
    """The shipped folder fla reads its kernel configurations from, and the card it was tuned on when that is not this
    GPU (``borrowed_from``; None for the GPU's own folder)."""

    folder: Path
    borrowed_from: str | None = None

    def describe(self, device_name: str) -> str:
        if self.borrowed_from is None:
            return f"fla kernel configurations: shipped for {device_name} ({self.folder.name})"
        return (f"fla kernel configurations: none shipped for {device_name}; using those tuned on "
                f"{self.borrowed_from} (same compute capability; GENDISTILL_FLA_CONFIGS=exact autotunes instead)")


def choose_folder(device_name: str, capability: tuple[int, int], sms: int, *,
                  borrow: bool = True) -> ConfigChoice | None:
    """The shipped configurations for a GPU: its own folder, else (``borrow``) the folder of a card with the same
    compute capability — the same shared memory and registers per SM, so each configuration (a block size, a warp and
    a stage count: one of the kernel's own autotuning candidates) launches there too, tuned for a sibling rather than
    this card — preferring the closest number of SMs. H100 and H200 are both compute capability 9.0 (132 SMs; the
    H100 PCIe 114): on a fresh H100 compiling and autotuning took 195 s before the first step, against 16 s on an
    H200 with its files (docs/results.md section 6). None when nothing fits."""
    own = shipped_dir(device_name)
    if own is not None:
        return ConfigChoice(own)
    if not borrow:
        return None
    siblings = sorted((abs(n - sms), folder) for folder, (cap, n) in TUNED_ON.items()
                      if tuple(cap) == tuple(capability) and shipped_dir(folder) is not None)
    if not siblings:
        return None
    folder = siblings[0][1]
    return ConfigChoice(SHIPPED / folder, borrowed_from=folder.replace("_", " "))


def _mode() -> str:
    """``GENDISTILL_FLA_CONFIGS``: ``1`` (default: this GPU's folder, else a sibling's), ``exact`` (this GPU's folder
    only) or ``0`` (none: fla autotunes)."""
    raw = os.environ.get("GENDISTILL_FLA_CONFIGS", "1").strip().lower()
    if raw not in ("0", "1", "exact"):
        raise ConfigError(f"GENDISTILL_FLA_CONFIGS={raw!r}: give 1 (shipped configurations, borrowed from a card of "
                          "the same compute capability when none are shipped for this GPU), exact (this GPU's own "
                          "only) or 0 (none: fla autotunes)")
    return raw


#: what :func:`activate` decided in this process: the folder chosen, or why none (at most one entry)
_DECISION: list[ConfigChoice | str] = []


def activate() -> ConfigChoice | None:
    """Set ``FLA_CONFIG_DIR`` / ``FLA_CACHE_MODE`` for this GPU's shipped configurations (:func:`choose_folder`).
    Returns the choice, or None (no CUDA, nothing shipped that fits this GPU, the user chose otherwise, or fla was
    imported already); :func:`describe_active` says which. Calling it again once it has pointed fla at a folder
    changes nothing: every path that may be the first to import fla calls it first."""
    mode = _mode()
    if not torch.cuda.is_available():
        return None
    if _DECISION and isinstance(_DECISION[-1], ConfigChoice) \
            and os.environ.get("FLA_CONFIG_DIR") == str(_DECISION[-1].folder):
        return _DECISION[-1]
    _DECISION.clear()
    if mode == "0":
        _DECISION.append("GENDISTILL_FLA_CONFIGS=0: none read; fla autotunes each kernel before its first use")
        return None
    if "FLA_CONFIG_DIR" in os.environ or "FLA_CACHE_MODE" in os.environ:
        settings = ", ".join(f"{k}={os.environ[k]}" for k in ("FLA_CONFIG_DIR", "FLA_CACHE_MODE") if k in os.environ)
        _DECISION.append(f"as the environment sets them ({settings})")
        return None
    if "fla.ops.utils.cache" in sys.modules:  # too late: fla read its settings at import
        _DECISION.append("none read: fla was imported before gendistill could point it at its shipped folder; fla "
                         "autotunes each kernel before its first use")
        return None
    props = torch.cuda.get_device_properties(0)
    choice = choose_folder(props.name, (props.major, props.minor), props.multi_processor_count,
                           borrow=mode != "exact")
    if choice is None:
        where = "" if mode == "exact" else " or a card of its compute capability"
        _DECISION.append(f"none shipped for {props.name}{where}: fla autotunes each kernel before its first use, "
                         "minutes on a fresh machine")
        return None
    os.environ["FLA_CONFIG_DIR"] = str(choice.folder)
    os.environ["FLA_CACHE_MODE"] = CACHE_MODE
    _DECISION.append(choice)
    return choice


def describe_active(device_name: str) -> str:
    """One line for a run's log: which shipped configurations fla reads in this process, or why none."""
    if not _DECISION:
        return "fla kernel configurations: not chosen in this process (fla has not been loaded)"
    d = _DECISION[-1]
    return d.describe(device_name) if isinstance(d, ConfigChoice) else f"fla kernel configurations: {d}"


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


def _kernels() -> Iterator[tuple[Any, str | None, str]]:
    """``(autotuner, its kernel's module, its kernel's name)`` for each of :func:`_autotuners` (kernel names are not
    unique across fla: the module tells same-named kernels apart)."""
    for tuner in _autotuners():
        yield tuner, getattr(getattr(tuner, "base_fn", None), "__module__", None), _kernel_name(tuner)


def _key_hash(key: tuple) -> str:
    """fla's hash of an autotune key (``AutotuneKey.key_hash``): md5 of the key as compact, sorted JSON."""
    return hashlib.md5(json.dumps(list(key), separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def write_config_files(entries: list[tuple[str, tuple, dict[str, Any]]], out_dir: str | Path,
                       triton_version: str, keep_existing: bool = False) -> dict[str, int]:
    """Write ``<kernel>.json`` in fla's format for ``entries`` ``(kernel name, autotune key, config dict)``, merging
    with files already in ``out_dir``; each file's ``default_config`` is its most common configuration.
    ``keep_existing``: a key the files already hold keeps its configuration (adding what another card's or run's log
    tuned without replacing what was shipped). Returns ``{kernel: number of keys}``; nothing is written (no folder
    made) without entries."""
    if not entries:
        return {}
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
        held = set(table) if keep_existing else set()  # what the file held before: a log's repeats still update
        for key, cfg in items:
            if (h := _key_hash(key)) not in held:
                table[h] = {"autotune_key": list(key), "config": cfg}
        common = Counter(json.dumps(e["config"], sort_keys=True) for e in table.values()).most_common(1)
        doc["default_config"] = json.loads(common[0][0])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        counts[name] = len(table)
    return counts


def dump_autotuned(out_dir: str | Path) -> dict[str, int]:
    """Write ``<kernel>.json`` for every fla kernel autotuned in this process into ``out_dir``, merging with files
    already there; the row buckets :func:`seed_row_buckets` filled in (never tuned anywhere) are left out. Returns
    ``{kernel: number of keys}``."""
    import triton  # noqa: PLC0415  (GPU only)

    entries = [(_kernel_name(t), tuple(key), _config_dict(cfg)) for t in _autotuners() for key, cfg in t.cache.items()
               if not _was_seeded(t, key, cfg)]
    return write_config_files(entries, out_dir, triton.__version__)


def keep_autotuned(root: str | Path, device: torch.device) -> tuple[Path, bool] | None:
    """Write what fla's autotuning chose in this process to ``root/<GPU>/`` (merged with what is there) when it is
    worth keeping: a CUDA ``device`` gendistill ships no configurations for, no ``FLA_CONFIG_DIR`` set (by the user,
    or by :func:`activate` for shipped or borrowed files), fla loaded. Returns the folder and whether this call made
    it, else None. On a fresh H100 the first training step came 195 s after the stage began (compiling and autotuning),
    against 16 s on an H200 with the shipped files (docs/results.md section 6). Keeping them is a convenience: a
    failure to write them is one warning, never the end of a run."""
    if device.type != "cuda" or "FLA_CONFIG_DIR" in os.environ or "fla" not in sys.modules:
        return None
    name = torch.cuda.get_device_name(device)
    if shipped_dir(name) is not None:
        return None
    out = Path(root) / gpu_dir_name(name)
    first = not out.is_dir()
    try:
        counts = dump_autotuned(out)
    except (ImportError, OSError) as e:
        warnings.warn(f"could not keep fla's tuned kernel configurations in {out}: {e}", stacklevel=2)
        return None
    return (out, first) if counts else None


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


#: fla modules whose kernels use Triton's plain autotuner (which does not read fla's files) and whose configurations
#: gendistill ships: only these are seeded by :func:`seed_plain_autotuners` (kernel names are not unique across fla:
#: ``recompute_w_u_fwd_kernel`` alone exists in four modules, ``fused_recurrent_fwd_kernel`` in three). The gated
#: norm's, and the common chunked-state, output and recurrent kernels that GLA, Mamba2 (simple GLA) and Gated DeltaNet
#: at head dimension 128 run: ``chunk_fwd_kernel_h``, ``chunk_bwd_kernel_dh``, ``chunk_bwd_kernel_dv`` and
#: ``fused_recurrent_fwd_kernel``, each 9-46 s of autotuning a key on a fresh H100 (2026-12-06).
PLAIN_AUTOTUNED_MODULES = ("fla.modules.norm.fused_norm_gate", "fla.ops.common.chunk_h", "fla.ops.common.chunk_o",
                           "fla.ops.common.fused_recurrent")


def _matching_config(tuner: Any, cfg: dict[str, Any]) -> Any | None:
    """The tuner's own candidate equal to the shipped ``cfg`` (kwargs, warps, stages, CTAs, registers), or None."""
    for c in tuner.configs:
        if (dict(c.kwargs), c.num_warps, c.num_stages, getattr(c, "num_ctas", 1), getattr(c, "maxnreg", None)) == (
                dict(cfg.get("kwargs", {})), cfg.get("num_warps", 4), cfg.get("num_stages", 3),
                cfg.get("num_ctas", 1), cfg.get("maxnreg")):
            return c
    return None


def _entries(path: Path) -> list[dict[str, Any]]:
    """The ``autotune_entries`` of one configuration file; a file that does not parse is skipped with a warning (as
    fla's own loader does)."""
    try:
        return list(json.loads(path.read_text()).get("autotune_entries", {}).values())
    except (OSError, ValueError, AttributeError) as e:
        warnings.warn(f"{path}: not a kernel configuration file ({type(e).__name__}: {e}); skipped", stacklevel=3)
        return []


def _seed_folder(folder: str | Path | None) -> str | Path | None:
    """Where seeding reads configurations: ``folder`` when given, else ``$FLA_CONFIG_DIR`` while fla reads it too
    (``FLA_CACHE_MODE`` set and not ``disabled``: unset, fla ignores the folder); None when gendistill's configurations
    are off (``GENDISTILL_FLA_CONFIGS=0``) or ``FLA_CACHE_MODE=disabled``."""
    mode = os.environ.get("FLA_CACHE_MODE")
    if _mode() == "0" or mode == "disabled":
        return None
    if folder is not None:
        return folder
    return os.environ.get("FLA_CONFIG_DIR") if mode else None


def _seedable(folder: str | Path, wanted: Callable[[str | None, str], bool]) -> Iterator[tuple[Any, Path]]:
    """``(autotuner, its file in folder)`` for each of fla's loaded autotuners that ``wanted(module, kernel name)``
    picks, has a configuration file in ``folder`` and no pruning hook (which may reject a seeded configuration)."""
    for tuner, module, name in _kernels():
        path = Path(folder) / f"{name}.json"
        if wanted(module, name) and not getattr(tuner, "early_config_prune", None) and path.is_file():
            yield tuner, path


def seed_plain_autotuners(folder: str | Path | None = None) -> int:
    """Hand the configurations in ``folder`` (default: ``$FLA_CONFIG_DIR``, which :func:`activate` sets) to the fla
    kernels of :data:`PLAIN_AUTOTUNED_MODULES` (the gated RMSNorm's; the common chunked kernels GLA and Mamba2 run),
    whose plain Triton autotuner does not read fla's files: each shipped key goes into that autotuner's in-process
    cache as the autotuner's own candidate configuration, so a launch with exactly that key is not benchmarked (3-5 s a
    kernel on a fresh H200, up to 46 s on an H100). A key not
    shipped (another number of rows: the key holds ``NB``) is autotuned as before; so is a kernel with a pruning hook
    or a shipped configuration that is not one of its candidates. Call after fla's kernel modules are imported.
    Returns the number of keys handed over (0 when :func:`_seed_folder` finds none). fla's own autotuner (which reads
    the files itself) in those modules is left alone."""
    from triton.runtime.autotuner import Autotuner  # noqa: PLC0415  (GPU kernels: present wherever fla's are)

    folder = _seed_folder(folder)
    if not folder:
        return 0
    seeded = 0
    for tuner, path in _seedable(folder, lambda module, name: module in PLAIN_AUTOTUNED_MODULES):
        if type(tuner) is not Autotuner:  # fla's CachedAutotuner: it reads its entries from FLA_CONFIG_DIR
            continue
        for entry in _entries(path):
            config = _matching_config(tuner, entry.get("config", {}))
            if config is not None:
                tuner.cache.setdefault(tuple(entry["autotune_key"]), config)
                seeded += 1
    return seeded


#: fla kernels whose autotuning key holds ``NB``, a bucket of the rows a launch normalises (``cdiv(rows, 65,536)``;
#: rows = tokens x heads), and use it for nothing else: the kernel's body never reads it. An evaluation's batches hold
#: every number of tokens, so each new bucket is a new key: under the exact-key mode (:data:`CACHE_MODE`) each was
#: autotuned (9 or 25 candidates compiled and timed), which :func:`seed_row_buckets` replaces by the shipped choice of
#: the nearest tuned bucket. ``module -> kernels``; a kernel whose body reads ``NB`` is never seeded
#: (:func:`_reads_bucket`).
ROW_BUCKET_KERNELS = {
    "fla.modules.norm.l2norm": ("l2norm_fwd_kernel", "l2norm_bwd_kernel"),
    "fla.modules.norm.fused_norm_gate": ("layer_norm_gated_fwd_kernel", "layer_norm_gated_bwd_kernel"),
}
#: the buckets seeded: 1 to 1,024, launches of up to 67M rows (a Qwen3-0.6B batch of 4.2M tokens, 16 heads)
ROW_BUCKETS = 1024

#: what :func:`seed_row_buckets` put into each autotuner's cache (``id(tuner) -> {key: config}``; autotuners live as
#: long as their fla module)
_SEEDED: dict[int, dict[tuple, Any]] = {}


def _was_seeded(tuner: Any, key: tuple, config: Any) -> bool:
    """Whether ``tuner``'s cached ``config`` for ``key`` is one :func:`seed_row_buckets` put there."""
    return _SEEDED.get(id(tuner), {}).get(tuple(key)) is config


def _reads_bucket(tuner: Any) -> bool:
    """Whether the kernel's body (its statements, not its signature) names ``NB``: then one bucket's configuration
    may not be another's. A source that cannot be read or parsed counts as reading it."""
    src = getattr(tuner.fn, "src", None)
    try:
        fn = ast.parse(textwrap.dedent(src)).body[0] if isinstance(src, str) else None
    except SyntaxError:
        fn = None
    if not isinstance(fn, ast.FunctionDef):
        return True
    return any(isinstance(n, ast.Name) and n.id == "NB" for stmt in fn.body for n in ast.walk(stmt))


def seed_row_buckets(folder: str | Path | None = None, buckets: int = ROW_BUCKETS) -> int:
    """Give each kernel of :data:`ROW_BUCKET_KERNELS` a configuration for every row bucket ``NB`` in ``1..buckets``:
    for each key shipped in ``folder`` (default ``$FLA_CONFIG_DIR``, which :func:`activate` sets), the same key at
    every other bucket gets the configuration tuned at the nearest shipped bucket (nearest in ratio; the smaller on a
    tie), as the autotuner's own candidate, in its in-process cache. A key already there (autotuned, or shipped
    exactly) is kept. The key's other fields (the feature dimension, flags, dtypes) never change, so a configuration
    is only ever reused at the dimension and dtypes it was tuned for; ``NB`` changes only how many programs launch.
    Returns the number of keys added (0 when :func:`_seed_folder` finds none). The keys it adds are remembered, so
    :func:`dump_autotuned` does not write them out as tuned. Call after fla's kernel modules are imported, after
    :func:`seed_plain_autotuners`."""
    folder = _seed_folder(folder)
    if not folder:
        return 0
    added = 0
    for tuner, path in _seedable(folder, lambda module, name: name in ROW_BUCKET_KERNELS.get(module, ())):
        if "NB" not in tuner.keys or _reads_bucket(tuner):
            continue
        at = tuner.keys.index("NB")
        tuned: dict[tuple, list[tuple[int, Any]]] = {}  # the key without its bucket -> [(bucket, candidate)]
        for entry in _entries(path):
            key, config = entry.get("autotune_key"), _matching_config(tuner, entry.get("config", {}))
            if config is not None and isinstance(key, list) and len(key) > at and isinstance(key[at], int):
                tuned.setdefault(tuple(key[:at] + key[at + 1:]), []).append((key[at], config))
        for rest, choices in tuned.items():
            for nb in range(1, buckets + 1):
                key = rest[:at] + (nb,) + rest[at:]
                if key not in tuner.cache:
                    tuner.cache[key] = min(choices, key=lambda c: (abs(math.log(c[0] / nb)), c[0]))[1]
                    _SEEDED.setdefault(id(tuner), {})[key] = tuner.cache[key]
                    added += 1
    return added


#: fla kernels that never autotune an 8-warp candidate on a Hopper GPU (compute capability 9.0), as fla's own lists
#: already leave 8 warps out there for many of its kernels (``NUM_WARPS = [2, 4] if IS_NVIDIA_HOPPER else [2, 4, 8]``
#: in ``fla/ops/common/chunk_delta_h.py``, ``kda/chunk_bwd.py`` and others: Triton miscompiles them on Hopper).
#: ``chunk_gla_fwd_kernel_o`` (GLA's output, fla 0.6.0) still lists 8: on an H100 under Triton 3.6, in float32 at
#: chunk size 32 (a document of 28 tokens alone), fla's benchmark of its candidate BK 64, BV 64, 8 warps, 2 stages
#: stopped with "CUDA error: misaligned address", which loses the process's CUDA context (docs/results.md section
#: 22; the 24 candidates before it had run, six with 8 warps at BK 32). ``module -> kernel names``.
HOPPER_NO_8_WARPS = {"fla.ops.gla.chunk": ("chunk_gla_fwd_kernel_o",)}


def prune_hopper_candidates(capability: tuple[int, int]) -> int:
    """On a Hopper GPU (``capability`` (9, 0)), take the 8-warp candidates out of the autotuners of
    :data:`HOPPER_NO_8_WARPS`'s kernels, so fla never benchmarks them for a key it has no configuration for. A
    configuration shipped (or already chosen in this process) for a key still runs as it is: the shipped 8-warp ones
    were chosen, and their kernels' results checked, on the card (chunk size 64). Call after fla's kernel modules are
    imported. Returns the number of candidates taken out (0 on other GPUs, or when done before)."""
    if tuple(capability) != (9, 0):
        return 0
    removed = 0
    for tuner, module, name in _kernels():
        if name in HOPPER_NO_8_WARPS.get(module, ()):
            keep = [c for c in tuner.configs if c.num_warps != 8]
            removed += len(tuner.configs) - len(keep)
            tuner.configs = keep
    return removed
