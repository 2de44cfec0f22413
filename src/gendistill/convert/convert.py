"""Teacher -> hybrid student conversion (paper §2 initialisation)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from gendistill.convert.layer_spec import parse_attention_layers
from gendistill.errors import GendistillError
from gendistill.io import publish_dir, write_error_text, write_errors
from gendistill.models.card import model_card
from gendistill.ownership import (check_free_space, check_replaceable, clean_stale_temps, temp_sibling,
                                  tensor_bytes, write_marker)
from gendistill.models.hybrid import HybridConfig, HybridForCausalLM
from gendistill.models.hybrid.configuration_hybrid import LINEAR_TYPE, check_kda_options
from gendistill.models.hybrid.families import get_family

# Teacher attention parameters a KDA mixer takes over; everything else of a replaced attention (Qwen3's q_norm and
# k_norm) has no counterpart in KDA and is dropped.
COPIED_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_NOT_TEACHER_CONFIG = ("model_type", "transformers_version", "architectures", "auto_map", "layer_types", "_name_or_path")


def student_config_from_teacher(teacher_config, attention_layers, **kda_options: Any) -> HybridConfig:
    """Build a :class:`HybridConfig` from a teacher config: its fields plus ``layer_types`` and KDA options."""
    family = get_family(teacher_config.model_type)
    n = teacher_config.num_hidden_layers
    keep = set(parse_attention_layers(attention_layers, n))
    teacher_types = getattr(teacher_config, "layer_types", None) or ["full_attention"] * n
    layer_types = [teacher_types[i] if i in keep else LINEAR_TYPE for i in range(n)]
    fields = {k: v for k, v in teacher_config.to_dict().items() if k not in _NOT_TEACHER_CONFIG}
    try:
        check_kda_options(kda_options)
        config = HybridConfig(base_model_type=family.model_type, layer_types=layer_types,
                              architectures=["HybridForCausalLM"], **fields, **kda_options)
    except ValueError as e:
        raise GendistillError(str(e).splitlines()[0]) from None
    # the KDA projections are the teacher's: a teacher bias with nowhere to go would be dropped
    for option, teacher_has in zip(("kda_qkv_bias", "kda_o_bias"), family.attention_biases(config)):
        if teacher_has and not getattr(config, option):
            proj = "q/k/v" if option == "kda_qkv_bias" else "o"
            raise GendistillError(f"{option}=False, but the teacher's {proj} projections have a bias, which the KDA "
                                  f"layers copy; leave {option} unset (it follows the teacher)")
    return config


@torch.no_grad()
def convert_teacher(teacher: PreTrainedModel, attention_layers: str | list[int], **kda_options: Any) -> HybridForCausalLM:
    """Make a hybrid student from ``teacher``: layers in ``attention_layers`` keep the teacher's attention, the rest get
    a KDA mixer whose q/k/v/o projections are the teacher's (k/v repeated per query head when
    ``kda_kv_mode="expand"``) and whose other parameters get the identity / Mamba-style initialisation.
    Embeddings, MLPs, norms, kept attention layers and lm_head are the teacher's. The student has the teacher's dtype
    and device, except the mixers' ``fp32_parameters`` (float32, with the same values whatever the teacher's dtype),
    and is returned in eval mode."""
    config = student_config_from_teacher(teacher.config, attention_layers, **kda_options)
    config._attn_implementation = teacher.config._attn_implementation
    dtype = next(teacher.parameters()).dtype
    device = next(teacher.parameters()).device
    # the mixers' fp32 parameters (A_log, dt_bias, ...) keep their float32 initial values, so the same seed gives the
    # same decays from a bf16 teacher (the default on CUDA) as from an fp32 one
    student = HybridForCausalLM(config).cast_keeping_recurrence_parameters(dtype, device)

    teacher_sd = teacher.state_dict()
    student_sd = student.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in teacher_sd.items():
        parts = name.split(".")
        if name in student_sd:
            loaded[name] = tensor
        elif "self_attn" in parts:
            layer_idx = int(parts[parts.index("layers") + 1])
            proj = parts[parts.index("self_attn") + 1]
            if config.layer_types[layer_idx] == LINEAR_TYPE and proj in COPIED_PROJECTIONS:
                target = name.replace(".self_attn.", ".linear_attn.")
                loaded[target] = _fit_projection(tensor, student_sd[target], proj, config)
    missing = student.load_state_dict(loaded, strict=False).missing_keys
    # Everything the teacher did not provide must be a KDA-only parameter (initialised by the mixer's reset_mixer_parameters).
    unexpected_missing = [k for k in missing if ".linear_attn." not in k and k != "lm_head.weight"]
    if unexpected_missing:
        raise GendistillError(f"conversion left student weights without a teacher source: {unexpected_missing[:5]}")
    # generate() should behave like the teacher's: same stop tokens and default sampling settings
    student.generation_config = copy.deepcopy(teacher.generation_config)
    if config.tie_word_embeddings:
        student.tie_weights()
    elif "lm_head.weight" in missing:
        raise GendistillError("the teacher has no lm_head.weight and does not tie embeddings")
    return student.eval()


def _fit_projection(weight: torch.Tensor, target: torch.Tensor, proj: str, config: HybridConfig) -> torch.Tensor:
    """Teacher k/v projection -> KDA k/v projection; in ``expand`` mode each kv head is repeated for its query heads."""
    if weight.shape == target.shape:
        return weight
    if proj in ("k_proj", "v_proj") and config.kda_kv_mode == "expand":
        teacher_kv = weight.shape[0] // config.kda_head_dim
        rep = config.kda_num_kv_heads // teacher_kv
        rest = weight.shape[1:]
        return weight.view(teacher_kv, config.kda_head_dim, *rest).repeat_interleave(rep, 0).reshape(target.shape)
    raise GendistillError(f"cannot fit teacher {proj} of shape {tuple(weight.shape)} into {tuple(target.shape)}")


def save_student(student: PreTrainedModel, tokenizer, out_dir: str | Path, overwrite: bool = False,
                 extra_files: dict[str, str] | None = None, what: str = "--out", card: str | None = None) -> Path:
    """Save model (safetensors), config and tokenizer (with its chat template) into ``out_dir`` atomically: written to
    a temporary sibling folder first and renamed into place, so a crash never leaves a half-written student.
    ``extra_files`` (name -> text) are written into the folder before the rename. ``card`` is the model card
    (``README.md``); by default :func:`gendistill.models.card.model_card` of the student's config.

    The folder is marked as ours (:mod:`gendistill.ownership`); ``overwrite`` replaces only such a folder. Without it
    publishing is exclusive: if ``out_dir`` appeared while the student was being written (a second run into the same
    folder), nothing is replaced and the error says so. Temporary folders of killed earlier saves are removed."""
    out = Path(out_dir)
    clean_stale_temps(out)  # first: a killed --overwrite publish's previous student is put back where it was
    if out.exists():  # a file, or a folder --overwrite may not replace, is named as such (the hint would not work)
        check_replaceable(out, "student", what)
    if out.exists() and not overwrite:
        raise GendistillError(f"{what}: output folder {out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(out, tensor_bytes(student.state_dict().values()), what)
    tmp = temp_sibling(out)
    tmp.mkdir()  # unlike mkdtemp (mode 0700) this honours the umask, so the saved model is readable like any folder
    try:
        student.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if card is None and isinstance(student.config, HybridConfig):
            card = model_card(student.config)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        write_marker(tmp, "student")
        if overwrite:
            check_replaceable(out, "student", what)  # it may have appeared meanwhile
        publish_dir(tmp, out, replace=overwrite)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GendistillError(f"{what}: {out} appeared while the student was being written (another run?); nothing "
                              "was replaced; pass --overwrite to replace it") from None
    except write_errors() as e:  # OSError, or safetensors' SafetensorError wrapping one (a disk that filled up)
        shutil.rmtree(tmp, ignore_errors=True)
        raise GendistillError(f"{what}: cannot write {out}: {write_error_text(e)}; {out} is left as it was") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
