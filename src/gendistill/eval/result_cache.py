"""The evaluation result cache: one (model, task, protocol) result of ``gendistill eval`` stored on disk and found
again by everything that determines it, so that a teacher (or any model) is never scored twice on the same examples
with the same settings. ``--no-cache`` neither reads nor writes it; ``--cache-dir`` moves it.

**The key** is a SHA-256 over a canonical JSON object of

* the *model*: a hash of every parameter and buffer of the loaded model (name, dtype, shape and raw bytes, in name
  order; :func:`weights_hash`), its config (without the paths and version stamps transformers adds) and class, and
  the tokenizer (its full serialisation, chat template and special tokens; :func:`tokenizer_hash`). Hashing the
  loaded tensors rather than the files they came from is exact for every kind of reference (an embedded GGUF, a
  ``.gguf`` file, a Hugging Face or student folder, a hub id: the files differ in layout, quantisation and
  metadata, the loaded model is what is scored), does not depend on where the files lie, and changes when any weight
  changes. It costs one read of the weights (0.6 s for SmolLM2-135M in float32 on one CPU core; 12 s for 15 GB of
  bfloat16 weights on an H200, mostly the copy to the host), against seconds to minutes for a load and minutes to
  hours for an evaluation;
* the *task*: its settings (prompt templates, extraction, stop strings, few-shot count and seed, the names of its
  hooks; not the paths of its files) and the content of every selected example together with the few-shot examples
  its prompt uses (:func:`task_fingerprint`), so an edited task file misses and the same file moved does not;
* the *protocol* and every setting that changes its result (:func:`result_settings`): the limit, the seed, ``--smoke``,
  the rope scaling, the dtype and the device type (float round-off differs between them; on CUDA the GPU's name too),
  for log-likelihood ``--loglik-chat-template``, for generation ``--max-new-tokens`` and the sampling settings;
  ``--engine`` and the batch settings as given (``--batch-size`` for generation, ``--token-budget`` for
  log-likelihood; unset = sized from free memory): in fp32 batching changes nothing (tests/eval/test_generate.py,
  test_loglik.py), but in bf16 on a GPU another batch composition rounds differently and a long greedy generation
  can take another token (docs/results.md §9: 45 of 50 ARC-Easy answers equal between batch 8 and batch 64), and
  seeded sampling draws one random stream across a batch;
* the *evaluator*: gendistill's version, :data:`EVALUATOR_VERSION`, a hash of gendistill's own source files (any edit
  to the code that loads, runs or scores a model misses, even one whose author forgot to bump the constant) and the
  versions of torch, transformers, tokenizers and flash-linear-attention.

**An entry** is a JSON file (never a pickle) ``<cache dir>/v1/<key[:2]>/<key>.json`` holding the row, the
per-example records and the greedy token ids (fidelity compares them; the extracted answers are the records'
``pred``), written atomically. An unreadable or malformed entry is a miss with one warning line and is replaced by
the new result; a cache that cannot be written is one warning line and the run goes on uncached. Nothing is ever
deleted. The default folder is ``$GENDISTILL_CACHE``, else ``$XDG_CACHE_HOME/gendistill/eval``, else
``~/.cache/gendistill/eval``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from gendistill.errors import ConfigError
from gendistill.eval.task import Example, Task
from gendistill.io import atomic_write_json, write_error_text, write_errors
from gendistill.version import __version__

#: bump when a change to scoring should not be served results of the old scoring (the source hash catches edits
#: inside gendistill anyway; this is for changes it cannot see, such as a new meaning of a stored field)
EVALUATOR_VERSION = 1
CACHE_ENV = "GENDISTILL_CACHE"
FORMAT = "gendistill-eval-cache"
LAYOUT = "v1"
#: task fields that name files (their content is hashed through the examples) or only document the task
_UNKEYED_TASK_FIELDS = frozenset({"data_file", "fewshot_file", "base_dir", "_pool", "doc"})
#: config entries that say where or when a model was saved, not what it computes (the dtype is keyed separately)
_UNKEYED_CONFIG = frozenset({"transformers_version", "dtype", "torch_dtype", "name_or_path"})


def default_cache_dir() -> Path:
    """``$GENDISTILL_CACHE``, else ``$XDG_CACHE_HOME/gendistill/eval``, else ``~/.cache/gendistill/eval``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "gendistill" / "eval"


def check_cache_dir(cache_dir: str | Path) -> None:
    """``--cache-dir`` names a folder or nothing yet (created on the first write): else one line, before any work."""
    p = Path(cache_dir).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--cache-dir: {cache_dir} exists and is not a folder")


# ------------------------------------------------------------------------------------------------ hashing


def _canonical(o: Any) -> Any:
    """JSON for what ``json`` cannot write itself: a function by its qualified name, a dataclass by its fields."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if callable(o):
        return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', type(o).__qualname__)}"
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    return f"{type(o).__qualname__}:{o!r}"


def sha256_json(obj: Any) -> str:
    """The SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data).hexdigest()


def weights_hash(model: torch.nn.Module, workers: int = 4) -> str:
    """SHA-256 over every parameter and buffer of ``model`` in name order: ``name|dtype|shape|sha256(raw bytes)``.
    Any changed weight, dtype or shape changes it. The tensors are copied to the host and hashed by ``workers``
    threads (both release the GIL): a 15 GB bfloat16 model on an H200 host hashes in 12 s instead of 26 s, most of
    it the device-to-host copy."""
    tensors = dict(model.named_buffers())
    tensors.update(model.named_parameters())
    names = sorted(tensors)
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(lambda n: _tensor_digest(tensors[n]), names))
    h = hashlib.sha256()
    for name, digest in zip(names, digests):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{digest}\n".encode())
    return h.hexdigest()


def tokenizer_hash(tok: Any) -> str:
    """SHA-256 of what the tokenizer does: its full serialisation (vocabulary, merges, normalisation, added tokens;
    the sorted vocabulary for a tokenizer without one), chat template, special tokens and padding side."""
    backend = getattr(tok, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else sorted(tok.get_vocab().items())
    return sha256_json({
        "class": type(tok).__qualname__, "body": body, "chat_template": getattr(tok, "chat_template", None),
        "special": {k: str(v) for k, v in (getattr(tok, "special_tokens_map", None) or {}).items()},
        "ids": [getattr(tok, f"{k}_token_id", None) for k in ("bos", "eos", "pad")],
        "padding_side": getattr(tok, "padding_side", None),
    })


def model_fingerprint(model: torch.nn.Module, tok: Any) -> str:
    """The model part of the key (see the module docstring): weights, config, class and tokenizer, taken right after
    loading (before ``--rope-scaling``, which is keyed separately)."""
    config = getattr(model, "config", None)
    cfg = config.to_dict() if config is not None else {}
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in _UNKEYED_CONFIG}
    # the generation config's end-of-sequence ids end generated answers (both engines read them; nothing else of
    # generation_config.json is used: the reference engine decodes by the evaluator's settings alone)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return sha256_json({"class": f"{type(model).__module__}.{type(model).__qualname__}", "config": cfg,
                        "weights": weights_hash(model), "tokenizer": tokenizer_hash(tok) if tok is not None else None,
                        "generation_eos": eos})


def _example(ex: Example) -> dict[str, Any]:
    return {f.name: getattr(ex, f.name) for f in dataclasses.fields(ex) if f.name != "where"}  # where: a file path


def task_fingerprint(task: Task, selected: list[Example], all_examples: list[Example]) -> str:
    """The task part of the key: the task's class and settings (not the paths of its files) and, for every selected
    example, its content and the content of the few-shot examples its prompt uses (each example hashed once)."""
    settings = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name not in _UNKEYED_TASK_FIELDS}
    digests: dict[int, str] = {}  # id(example) -> its hash; the examples live as long as this call

    def digest(ex: Example) -> str:
        if id(ex) not in digests:
            digests[id(ex)] = sha256_json(_example(ex))
        return digests[id(ex)]

    examples = [[digest(ex), [digest(s) for s in task.fewshot_for(ex, all_examples)]] for ex in selected]
    return sha256_json({"class": f"{type(task).__module__}.{type(task).__qualname__}", "settings": settings,
                        "examples": examples})


@functools.cache
def source_hash() -> str:
    """SHA-256 over gendistill's own source files (relative path and bytes, in path order)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(f"{p.relative_to(root).as_posix()}\n".encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def evaluator_fingerprint() -> dict[str, Any]:
    """The evaluator part of the key: versions and the source hash."""
    return {"evaluator": EVALUATOR_VERSION, "gendistill": __version__, "source": source_hash(),
            "torch": torch.__version__, **{d: _version(d) for d in ("transformers", "tokenizers",
                                                                    "flash-linear-attention")}}


def device_fingerprint(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The dtype and the device type; on CUDA also the GPU's name (its kernels round differently)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"dtype": str(dtype), "device": device.type, "accelerator": name}


def result_settings(cfg: Any, protocol: str, limit: int | None, rope: Any) -> dict[str, Any]:
    """Every setting of ``cfg`` (a :class:`gendistill.eval.config.EvalConfig`) that changes a ``protocol`` result
    (see the module docstring for what is left out and why); ``limit`` is the effective one (``--smoke`` caps it),
    ``rope`` the parsed ``--rope-scaling`` (:class:`gendistill.eval.rope.RopeScaling` or None)."""
    out: dict[str, Any] = {"protocol": protocol, "limit": limit, "seed": cfg.seed, "smoke": cfg.smoke,
                           "rope_scaling": rope}
    out["engine"] = cfg.engine
    if protocol == "loglik":
        out.update(loglik_chat_template=cfg.loglik_chat_template, token_budget=cfg.token_budget)
    else:
        # bf16 round-off depends on the batch, and seeded sampling draws one random stream across it
        out.update(max_new_tokens=cfg.max_new_tokens, samples=cfg.samples, temperature=cfg.temperature,
                   top_p=cfg.top_p, top_k=cfg.top_k, batch_size=cfg.batch_size)
    return out


# ------------------------------------------------------------------------------------------------ entries


@dataclasses.dataclass
class CachedResult:
    """One stored result: the report row, the per-example records and the greedy token ids (generation; empty for
    log-likelihood), as the runner made them."""

    row: dict[str, Any]
    records: list[dict[str, Any]]
    greedy_ids: list[list[int]]

    def labelled(self, label: str) -> CachedResult:
        """The result as model ``label`` scored it (the key does not depend on the label), its row marked
        ``"cached": true`` (its ``seconds`` and ``throughput`` are those of the run that scored it)."""
        row = {**self.row, "model": label, "cached": True}
        return CachedResult(row, [{**r, "model": label} for r in self.records], self.greedy_ids)


Computed = tuple[dict[str, Any] | None, list[dict[str, Any]], list[list[int]]]  # what a protocol run returns


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _parse_entry(obj: Any, key: str) -> CachedResult:
    """The result in an entry's JSON; ValueError naming what is wrong with it."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError("not a gendistill eval cache entry")
    if obj.get("key") != key:
        raise ValueError("it holds another key")
    row, records, ids = obj.get("row"), obj.get("records"), obj.get("greedy_ids")
    if not isinstance(row, dict) or not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("no row or records")
    if not isinstance(ids, list) or not all(isinstance(s, list) and all(type(i) is int for i in s) for s in ids):
        raise ValueError("malformed greedy token ids")
    return CachedResult(row, records, ids)


class ResultCache:
    """The entries under ``root`` (None: :func:`default_cache_dir`; see the module docstring) for one evaluation
    run on ``device`` in ``dtype``.
    Reading never raises: a missing, unreadable or malformed entry is a miss (the latter two with one warning line);
    a folder that cannot be written is one warning line, and the run goes on without writing."""

    def __init__(self, root: str | Path | None, device: torch.device, dtype: torch.dtype):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.env = {**evaluator_fingerprint(), **device_fingerprint(device, dtype)}
        self.writable = True
        self._task_keys: dict[str, str] = {}

    def path(self, key: str) -> Path:
        return self.root / LAYOUT / key[:2] / f"{key}.json"

    def parts(self, model_key: str, task: Task, selected: list[Example], all_examples: list[Example],
              settings: dict[str, Any]) -> dict[str, Any]:
        """Everything the key of ``task``'s result for the model ``model_key`` hashes (a task's examples are the
        same for the whole run, so its fingerprint is computed once)."""
        if task.name not in self._task_keys:
            self._task_keys[task.name] = task_fingerprint(task, selected, all_examples)
        parts = {**self.env, "model": model_key, "task_name": task.name, "task": self._task_keys[task.name],
                 **settings}
        return json.loads(json.dumps(parts, default=_canonical))  # plain JSON (a rope setting is a dataclass)

    def get(self, key: str) -> CachedResult | None:
        p = self.path(key)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            _warn(f"eval cache entry {p} cannot be read ({exc}); scoring again")
            return None
        try:
            return _parse_entry(json.loads(text), key)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            _warn(f"eval cache entry {p} is damaged ({exc}); scoring again")
            return None

    def put(self, key: str, parts: dict[str, Any], result: CachedResult) -> None:
        if not self.writable:
            return
        entry = {"format": FORMAT, "key": key, "parts": parts, "row": result.row, "records": result.records,
                 "greedy_ids": result.greedy_ids}
        try:
            atomic_write_json(self.path(key), entry)
        except write_errors() as exc:
            self.writable = False
            _warn(f"cannot write the eval cache in {self.root} ({write_error_text(exc)}); results are not cached")

    def through(self, parts: dict[str, Any], label: str, compute: Callable[[], Computed]) -> Computed:
        """The stored result of ``parts`` as model ``label``'s (one line on stderr says so), else ``compute()``
        (a row, or None when the task has no such protocol; its records; its greedy token ids), stored."""
        key = sha256_json(parts)
        hit = self.get(key)
        if hit is not None:
            print(f"{label} {parts['task_name']} {parts['protocol']}: cached", file=sys.stderr, flush=True)
            res = hit.labelled(label)
            return res.row, res.records, res.greedy_ids
        row, records, ids = compute()
        if row is not None:
            self.put(key, parts, CachedResult(row, records, ids))
        return row, records, ids


__all__ = ["EVALUATOR_VERSION", "CACHE_ENV", "CachedResult", "ResultCache", "check_cache_dir", "default_cache_dir",
           "device_fingerprint", "evaluator_fingerprint", "model_fingerprint", "result_settings", "task_fingerprint",
           "tokenizer_hash", "weights_hash"]
