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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from gendistill.errors import GendistillError

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
    from gendistill.models.hybrid import HybridConfig  # noqa: PLC0415

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
    from gendistill.teachers import resolve_teacher  # noqa: PLC0415

    text = str(spec).strip() if isinstance(spec, (str, Path)) else spec
    if isinstance(text, str):
        path = Path(text).expanduser()
        if path.is_dir() and _student_config(path) is not None:
            return ModelRef(text, "student", str(path.resolve()))
    source = resolve_teacher(text)  # raises the one-line errors for everything that is not a reference
    kind = {"embedded": "embedded", "gguf": "gguf", "folder": "folder", "hub": "hub"}[source.kind]
    return ModelRef(str(text), kind, source.path)  # type: ignore[arg-type]


def _load_student(location: str, dtype: torch.dtype, device: torch.device, hub_kwargs: dict[str, Any] | None = None,
                  with_tokenizer: bool = True):
    from safetensors import SafetensorError  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    import gendistill  # noqa: F401, PLC0415  (registers the hybrid with the Auto classes)

    kw = hub_kwargs or {}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(location, **kw) if with_tokenizer else None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as e:
        # a damaged or hand-edited folder (bad config value, truncated weights, wrong shapes): one line
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
    from gendistill.teachers import TeacherSource, _hub_kwargs  # noqa: PLC0415

    kw = _hub_kwargs(TeacherSource("hub", ref.location))
    try:
        from transformers import PretrainedConfig  # noqa: PLC0415

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
    from gendistill.devices import resolve_device, resolve_dtype  # noqa: PLC0415

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ref = spec if isinstance(spec, ModelRef) else resolve_model(spec)
    if ref.kind == "student":
        return _load_student(ref.location, dt, dev, with_tokenizer=tokenizer)
    if ref.kind == "hub":
        is_student, kw = _hub_is_student(ref)
        if is_student:
            return _load_student(ref.location, dt, dev, kw, with_tokenizer=tokenizer)
    from gendistill.teachers import load_teacher  # noqa: PLC0415

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


__all__ = ["ModelRef", "ModelKind", "resolve_model", "load_model", "is_student_folder", "model_label"]
