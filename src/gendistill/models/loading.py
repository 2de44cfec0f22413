"""The one model loader: every command and the Python API turn a model reference into ``(model, tokenizer)`` here.

A reference is

* a short name of an embedded teacher (``smollm2-135m-instruct``),
* a ``.gguf`` file,
* a local Hugging Face folder of a supported family (Qwen3, Llama, Qwen2),
* a saved hybrid student folder (``config.json`` with ``model_type: hybrid_kda``),
* a hub id ``org/name`` -- a teacher, or a student pushed with ``push_to_hub`` (decided from its ``config.json``).

Teachers go through :func:`gendistill.teachers.load_teacher` (family check, GGUF header, de-quantisation); students
through transformers' ``AutoModelForCausalLM`` (``import gendistill`` registers the hybrid). Device and dtype names go
through :mod:`gendistill.devices` (``auto`` by default). Every user error is one :class:`GendistillError` line.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from gendistill.devices import resolve_device, resolve_dtype
from gendistill.errors import GendistillError
from gendistill.models.hybrid import HybridConfig  # (importing it registers the hybrid with the Auto classes)
from gendistill.teachers import TeacherSource, hub_access_kwargs, load_teacher, resolve_teacher
from gendistill.weight_files import has_safetensors, refuse_pickle_weights

ModelKind = Literal["embedded", "gguf", "folder", "student", "hub"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference. ``spec``: as the user gave it; ``kind``: see the module docstring; ``location``:
    the absolute file/folder, or the hub id."""

    spec: str
    kind: ModelKind
    location: str

    @property
    def label(self) -> str:
        """A short name for tables and file names: a .gguf file's stem, a folder's name, else the spec."""
        if self.kind == "gguf":
            return Path(self.location).stem
        if self.kind in ("folder", "student"):
            return Path(self.location).name
        return self.spec


def _student_config(folder: Path) -> dict[str, Any] | None:
    """The parsed ``config.json`` of ``folder`` if it is a hybrid student's, else None."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GendistillError(f"model folder {folder}: cannot read config.json ({e})") from None
    return data if isinstance(data, dict) and data.get("model_type") == HybridConfig.model_type else None


def is_student_folder(spec: str | Path) -> bool:
    """True for a local folder holding a saved hybrid student."""
    try:
        return Path(spec).expanduser().is_dir() and _student_config(Path(spec).expanduser()) is not None
    except GendistillError:
        return False


def resolve_model(spec: str | Path) -> ModelRef:
    """Decide what ``spec`` names without loading anything (touches the file system only); a reference that cannot
    exist (a missing file or folder, a folder without ``config.json``, a malformed name) fails here in one line."""
    text = str(spec).strip() if isinstance(spec, (str, Path)) else spec
    if isinstance(text, str):
        path = Path(text).expanduser()
        if path.is_dir() and _student_config(path) is not None:
            check_student_weights(path)  # weights that do not fit the config: one line, before anything loads
            return ModelRef(text, "student", str(path.resolve()))
    source = resolve_teacher(text)  # raises the one-line errors for everything that is not a reference
    kind = {"embedded": "embedded", "gguf": "gguf", "folder": "folder", "hub": "hub"}[source.kind]
    return ModelRef(str(text), kind, source.path)  # type: ignore[arg-type]


def _check_weight_files(location: str) -> None:
    """A local student folder must hold safetensors weights (:mod:`gendistill.weight_files`)."""
    folder = Path(location)
    if not folder.is_dir():
        return  # a hub id: transformers is told to load safetensors only
    refuse_pickle_weights(folder, "student folder", "use a folder written by gendistill convert/distill")
    if not has_safetensors(folder):
        raise GendistillError(f"student folder {location}: no model.safetensors (the weights are missing)")


def _stored_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Each tensor's shape in a student folder's safetensors weights (one file or an index of shards), read from the
    headers (no tensor is loaded); None when they cannot be read (the loader's own error then says how)."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        shapes: dict[str, tuple[int, ...]] = {}
        for name in files:
            with safe_open(str(folder / name), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        return shapes
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def check_student_weights(folder: str | Path) -> None:
    """Before any model is loaded: the weights of a local student folder hold exactly the tensors its config.json
    describes, each of the shape it describes (compared from the safetensors headers against the model built on the
    meta device, so no memory is used). A config whose ``layer_types``, KDA options or sizes were edited, or copied
    from another student, is one line instead of a model with randomly initialised mixers (or transformers' error
    pointing at a report it printed). Loading checks the names again (:func:`_check_loading_info`), also for hub
    students."""
    folder = Path(folder)
    _check_weight_files(str(folder))
    stored = _stored_shapes(folder)
    if stored is None:
        return
    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        tied = set((getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else ())
    except Exception:  # noqa: BLE001 - a config the loader will reject with its own line; nothing to compare
        return
    _check_loading_info(str(folder), {"missing_keys": set(expected) - set(stored) - tied,
                                      "unexpected_keys": set(stored) - set(expected),
                                      "mismatched_keys": {k for k in stored.keys() & expected.keys()
                                                          if stored[k] != expected[k]}})


@contextlib.contextmanager
def _quiet_load_report():
    """transformers logs a table of missing/unexpected weights as a warning; a student's are refused with one line
    instead (:func:`_check_loading_info`), so the table is not shown."""
    def not_the_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    log = logging.getLogger("transformers.modeling_utils")  # a filter, not a level: transformers reads the level
    log.addFilter(not_the_report)
    try:
        yield
    finally:
        log.removeFilter(not_the_report)


def _check_loading_info(location: str, info: dict[str, Any]) -> None:
    """Every tensor of a gendistill student must come from its weights file and every stored tensor must be used:
    transformers only warns and initialises the missing ones at random (a ``config.json`` whose ``layer_types`` do
    not match the weights would load with random mixers and evaluate, chat and distill as if nothing were wrong)."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", mismatched)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{more})")
    raise GendistillError(
        f"student folder {location}: its weights do not match its config.json: {'; '.join(parts)}; was config.json "
        "(layer_types, the KDA options) edited, or copied from another student?")


def _load_student(location: str, dtype: torch.dtype, device: torch.device, hub_kwargs: dict[str, Any] | None = None,
                  with_tokenizer: bool = True):
    _check_weight_files(location)
    kw = hub_kwargs or {}
    try:
        with _quiet_load_report():
            model, info = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, use_safetensors=True,
                                                               output_loading_info=True, **kw)
        _check_loading_info(location, info)
        tokenizer = AutoTokenizer.from_pretrained(location, **kw) if with_tokenizer else None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError, StrictDataclassError) as e:
        # a damaged or hand-edited folder (bad config value or type, truncated weights, wrong shapes): one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GendistillError(f"cannot load student folder {location}: {first[:300]}") from None
    model.upcast_recurrence_parameters()  # A_log / dt_bias stay float32 whatever the dtype
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None and \
            getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _hub_is_student(ref: ModelRef) -> tuple[bool, dict[str, Any]]:
    """Whether a hub id names a pushed hybrid student (its config says ``hybrid_kda``), and the hub keyword arguments
    (``local_files_only`` without network). Network or cache errors are left to the teacher loader's messages."""
    kw = hub_access_kwargs(TeacherSource("hub", ref.location))
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(ref.location, **kw)
    except Exception:  # noqa: BLE001  (offline, missing, private: load_teacher says which, in one line)
        return False, kw
    return config_dict.get("model_type") == "hybrid_kda", kw


def load_model(spec: str | Path | ModelRef, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               tokenizer: bool = True):
    """Return ``(model, tokenizer)`` in eval mode for any model reference (see the module docstring), with the
    parameters in ``dtype`` (``auto``: bfloat16 on CUDA, float32 on CPU; KDA's A_log / dt_bias stay float32) on
    ``device`` (``auto``: cuda if available). The tokenizer always has a padding token (its EOS if it had none);
    ``tokenizer=False`` returns ``None`` instead (a folder without tokenizer files loads then too)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ref = spec if isinstance(spec, ModelRef) else resolve_model(spec)
    if ref.kind == "student":
        return _load_student(ref.location, dt, dev, with_tokenizer=tokenizer)
    if ref.kind == "hub":
        is_student, kw = _hub_is_student(ref)
        if is_student:
            return _load_student(ref.location, dt, dev, kw, with_tokenizer=tokenizer)
    model, tok = load_teacher(ref.spec if ref.kind == "embedded" else ref.location, dtype=dt, device=dev,
                              tokenizer=tokenizer)
    if tok is not None and getattr(tok, "pad_token", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def model_label(spec: str | Path) -> str:
    """A short name for tables and file names (see :attr:`ModelRef.label`); the spec itself if it does not resolve."""
    try:
        return resolve_model(spec).label
    except GendistillError:
        return str(spec)


__all__ = ["ModelRef", "ModelKind", "resolve_model", "load_model", "is_student_folder", "model_label",
           "check_student_weights"]
