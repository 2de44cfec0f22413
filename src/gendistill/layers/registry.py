"""Registry of linear-time token mixers that can replace a teacher attention layer.

Adding a mixer is one module with a class taking ``(config, layer_idx)`` and a
``forward(hidden_states, attention_mask=None, cache=None, cu_seqlens=None) -> hidden_states`` plus one line here;
subclassing :class:`gendistill.layers.base.TeacherShapedMixer` gives the teacher-shaped projections, convs, padding,
packing, cache and output norm, leaving only the recurrence (``mix``) and its parameters to write.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from gendistill.layers.gated_deltanet import GatedDeltaNet
from gendistill.layers.gla import GatedLinearAttention
from gendistill.layers.kda import KimiDeltaAttention
from gendistill.layers.mamba2 import Mamba2
from gendistill.ops.backend import fla_gated_backward_refused

LINEAR_MIXERS: dict[str, type[nn.Module]] = {
    "kda": KimiDeltaAttention,
    "gated_deltanet": GatedDeltaNet,
    "gla": GatedLinearAttention,
    "mamba2": Mamba2,
}


def get_linear_mixer(name: str) -> type[nn.Module]:
    try:
        return LINEAR_MIXERS[name]
    except KeyError:
        raise ValueError(f"unknown linear_attention_type {name!r}; registered: {', '.join(sorted(LINEAR_MIXERS))}") from None


def fp32_parameter_names() -> tuple[str, ...]:
    """Names (inside a mixer) of the parameters some registered mixer keeps in float32 whatever the model dtype: the
    union of every mixer's ``fp32_parameters``, sorted."""
    return tuple(sorted({name for mixer in LINEAR_MIXERS.values() for name in getattr(mixer, "fp32_parameters", ())}))


def backward_refusal(mixer: type[nn.Module] | None) -> str | None:
    """Why fla would refuse this mixer class's backward on this machine (one clause), or None: only a mixer whose
    backward runs fla's gated ``chunk_bwd_dqkwg`` can be refused
    (:func:`gendistill.ops.backend.fla_gated_backward_refused`, told whether its states are float32)."""
    if not getattr(mixer, "fla_gated_dqkwg_backward", False):
        return None
    return fla_gated_backward_refused(fp32_states=mixer.fla_dqkwg_fp32_states)


def training_refusal(model: nn.Module, device: torch.device) -> str | None:
    """One line saying why ``model``'s linear mixers cannot be trained on ``device`` with this installation, or None
    (:func:`mixer_training_refusal` for the mixers ``model`` holds)."""
    held = {name for m in model.modules() for name, cls in LINEAR_MIXERS.items() if type(m) is cls}
    return mixer_training_refusal(held, device)


def mixer_training_refusal(mixers: Iterable[str], device: torch.device) -> str | None:
    """One line saying why students of these registered mixers (``linear_attention_type`` names) cannot be trained on
    ``device`` with this installation, or None.

    Today's one case: Gated DeltaNet and Mamba2 mixers on a card where fla refuses their backward
    (:func:`gendistill.ops.backend.fla_gated_backward_refused`); the line names the ways out."""
    if device.type != "cuda":
        return None
    refused = {n: why for n in sorted(set(mixers)) if (why := backward_refusal(LINEAR_MIXERS.get(n))) is not None}
    if not refused:
        return None
    names, reason = list(refused), next(iter(refused.values()))
    return (f"student mixers {', '.join(names)} cannot train on this GPU: {reason}; use linear_attention_type kda or "
            "gla, or GENDISTILL_KDA_BACKEND=torch (exact, much slower)")
