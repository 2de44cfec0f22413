"""Registry of linear-time token mixers that can replace a teacher attention layer.

Adding a mixer is one module with a class taking ``(config, layer_idx)`` and a
``forward(hidden_states, attention_mask=None, cache=None, cu_seqlens=None) -> hidden_states`` plus one line here;
subclassing :class:`gendistill.layers.base.TeacherShapedMixer` gives the teacher-shaped projections, convs, padding,
packing, cache and output norm, leaving only the recurrence (``mix``) and its parameters to write.
"""

from __future__ import annotations

from torch import nn

from gendistill.layers.gated_deltanet import GatedDeltaNet
from gendistill.layers.gla import GatedLinearAttention
from gendistill.layers.kda import KimiDeltaAttention
from gendistill.layers.mamba2 import Mamba2

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
