"""``gendistill.convert(...)`` (the ``gendistill convert`` command's function) and its result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gendistill.convert.convert import convert_teacher, save_student
from gendistill.convert.layer_spec import parse_attention_layers
from gendistill.convert.summary import ConversionSummary, summarize
from gendistill.devices import resolve_device, resolve_dtype
from gendistill.errors import GendistillError
from gendistill.layers.registry import LINEAR_MIXERS
from gendistill.models.card import public_model_name
from gendistill.models.hybrid.configuration_hybrid import check_kda_options
from gendistill.models.loading import load_model, resolve_model
from gendistill.ownership import check_replaceable, check_writable
from gendistill.teachers import DEFAULT_TEACHER, load_teacher_config


@dataclass
class ConvertResult:
    """A converted student.

    Attributes:
        student: the :class:`~gendistill.models.hybrid.HybridForCausalLM` in memory (eval mode).
        tokenizer: the teacher's tokenizer (with its chat template).
        out: the folder it was saved to (safetensors, config, tokenizer, ``README.md`` model card, ``SUMMARY.json``),
            or ``None`` when ``out`` was not given.
        summary: layers, parameters and cache bytes, teacher vs student
            (:class:`~gendistill.convert.summary.ConversionSummary`).
    """

    student: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    out: Path | None
    summary: ConversionSummary

    @property
    def layer_spec(self) -> str:
        """``attention:…;kda:…`` (``gendistill convert --attention-layers`` reads it back)."""
        return self.student.config.layer_spec()


_KDA_FLAGS = (("kda_kv_mode", "--kv-mode"), ("kda_gate_activation", "--gate-activation"),
              ("kda_conv_activation", "--conv-activation"), ("kda_gate_lower_bound", "--kda-gate-lower-bound"),
              ("linear_attention_type", "--mixer"))


def _kda_options(mixer: str, kv_mode: str, gate_activation: str, conv_activation: str | None,
                 gate_lower_bound: float | None = None) -> dict[str, Any]:
    """The linear mixer and its options as the student config takes them, checked (under the command's flag names)."""
    if mixer not in LINEAR_MIXERS:
        raise GendistillError(f"unknown --mixer {mixer!r}; choose one of {', '.join(LINEAR_MIXERS)}")
    conv_act = None if conv_activation is None or str(conv_activation).lower() == "none" else conv_activation
    kda_options = dict(kda_kv_mode=kv_mode, kda_gate_activation=gate_activation, kda_conv_activation=conv_act)
    if gate_lower_bound is not None:
        kda_options["kda_gate_lower_bound"] = gate_lower_bound
    try:
        check_kda_options({**kda_options, "linear_attention_type": mixer})
    except ValueError as e:
        msg = str(e)
        for key, flag in _KDA_FLAGS:
            msg = msg.replace(key, flag)
        raise GendistillError(msg) from None
    return kda_options


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():  # a file, or a folder --overwrite may not replace, is named as such (the hint would not work)
        check_replaceable(out, "student", "--out")
    if out.exists() and not overwrite:
        raise GendistillError(f"--out: output folder {out} already exists (pass --overwrite to replace it)")
    check_writable(out, "--out")


def convert(teacher: str = DEFAULT_TEACHER, attention_layers: str | list[int] = "every:4", out: str | Path | None = None,
            *, mixer: str = "kda", kv_mode: str = "repeat", gate_activation: str = "silu",
            conv_activation: str | None = None, kda_gate_lower_bound: float | None = None, dtype: str = "auto",
            device: str = "auto", seed: int = 0, overwrite: bool = False) -> ConvertResult:
    """Convert ``teacher`` (any model reference: short name, ``.gguf`` file, HF folder, hub id) into a hybrid student
    whose ``attention_layers`` keep softmax attention (``"0,2,6"``, ``"every:4"``, ``"ratio:0.25"``, ``"none"``,
    ``"all"``, a JSON file, or a :meth:`HybridConfig.layer_spec` string) and whose other layers become ``mixer``
    (``kda``, ``gated_deltanet``, ``gla``, ``mamba2``) initialised from the teacher's q/k/v/o projections.
    ``kda_gate_lower_bound`` (a number in ``[-5, 0)``) gives the KDA layers fla's bounded decay gate instead of the
    paper's (see :class:`~gendistill.models.hybrid.HybridConfig`; it needs its own distillation).

    With ``out`` the student is saved there atomically with its model card (``overwrite`` replaces only a folder
    gendistill wrote). Every argument is checked before the teacher is loaded.

    >>> import gendistill
    >>> res = gendistill.convert("smollm2-135m-instruct", "every:4", out="runs/student")  # doctest: +SKIP
    >>> res.summary.student_params, res.layer_spec                                         # doctest: +SKIP
    """
    # checked before the teacher loads
    kda_options = _kda_options(mixer, kv_mode, gate_activation, conv_activation, kda_gate_lower_bound)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if out is not None:
        out = Path(out)
        _check_out(out, overwrite)
    try:
        ref = resolve_model(teacher)
    except GendistillError as e:  # the option it came from, as bench and distill name it
        raise GendistillError(f"--teacher: {e}") from None
    if ref.kind == "student":
        raise GendistillError(f"--teacher: {teacher} is already a hybrid student; convert its teacher instead")
    # the layer spec against the teacher's layer count, from its config alone (de-quantising a GGUF takes seconds)
    parse_attention_layers(attention_layers, load_teacher_config(str(teacher)).num_hidden_layers)
    model, tokenizer = load_model(ref, dtype=dt, device=dev)
    torch.manual_seed(seed)
    student = convert_teacher(model, attention_layers, linear_attention_type=mixer, **kda_options)
    student.config.teacher = public_model_name(teacher)
    summary = summarize(public_model_name(teacher) or str(teacher), model, student)
    if out is not None:
        save_student(student, tokenizer, out, overwrite=overwrite,
                     extra_files={"SUMMARY.json": json.dumps(summary.to_dict(), indent=2) + "\n"})
    return ConvertResult(student=student, tokenizer=tokenizer, out=out, summary=summary)


__all__ = ["ConvertResult", "convert"]
