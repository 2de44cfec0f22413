"""Registry of linear-time token mixers that can replace a teacher attention layer.

Adding a mixer (Gated DeltaNet, GLA, Mamba2, ...) is one module with a class taking ``(config, layer_idx)`` and a
``forward(hidden_states, attention_mask=None, cache=None, cu_seqlens=None) -> hidden_states`` plus one line here.
"""

from __future__ import annotations

from torch import nn

from gendistill.layers.kda import KimiDeltaAttention

LINEAR_MIXERS: dict[str, type[nn.Module]] = {
    "kda": KimiDeltaAttention,
}


def get_linear_mixer(name: str) -> type[nn.Module]:
    try:
        return LINEAR_MIXERS[name]
    except KeyError:
        raise ValueError(f"unknown linear_attention_type {name!r}; registered: {', '.join(sorted(LINEAR_MIXERS))}") from None
