"""Greedy-learned selection's model: the teacher with every attention replaced by a learned mix of that attention
and a KDA mixer,

    out_i = alpha_i * attn_i(x) + (1 - alpha_i) * kda_i(x),   alpha_i = sigmoid(scale * theta_i),   x [B, T, D],

trained by stage-3a KL to the untouched teacher plus a sparsity pressure ``lambda * mean_i alpha_i`` that pushes
every layer towards KDA; layers whose attention the KL keeps paying for end with the largest alpha. The pressure
enters as its gradient (a hook on each ``theta_i``), so the stage-3a trainer (``distill.trainer.run_stage``) runs
unchanged. ``scale`` gives the gates their own effective learning rate under Adam (``gate_lr = scale * lr``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from gendistill.distill.stages import decoder_layers, run_mixer


class MixedAttention(nn.Module):
    """Wraps a teacher attention module (``attn``, frozen by the caller) and a KDA mixer (``linear_attn``); called
    exactly like the attention (``hidden_states [B, T, D]``, ``position_embeddings``, ``attention_mask``, ...,
    ``position_ids`` in the keyword arguments), returns ``(mix [B, T, D], None)``."""

    def __init__(self, attn: nn.Module, linear_attn: nn.Module, scale: float):
        super().__init__()
        self.attn = attn
        self.linear_attn = linear_attn
        self.scale = scale
        self.mix_logit = nn.Parameter(torch.zeros(()))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.scale * self.mix_logit)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        a, _ = self.attn(hidden_states, *args, **kwargs)
        x = hidden_states
        if torch.is_autocast_enabled(x.device.type):  # fla's kernels want one dtype for q/k/v (see cast_mixer_inputs)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        k = run_mixer(self.linear_attn, x, position_ids.expand(x.shape[0], -1))
        alpha = self.alpha
        return alpha * a + (1 - alpha) * k.to(a.dtype), None


def build_mixed_model(teacher: nn.Module, aligned: nn.Module, scale: float) -> nn.Module:
    """A float32 copy of ``teacher`` whose layer ``i`` attention is ``MixedAttention(teacher attention i, KDA mixer i
    of the aligned all-KDA student)``; every gate starts at alpha = 0.5."""
    mixed = copy.deepcopy(teacher).to(torch.float32)
    for layer, s_layer in zip(decoder_layers(mixed), decoder_layers(aligned)):
        layer.self_attn = MixedAttention(layer.self_attn, copy.deepcopy(s_layer.linear_attn).float(), scale)
    return mixed


def mixers(model: nn.Module) -> list[MixedAttention]:
    return [layer.self_attn for layer in decoder_layers(model)]


def add_sparsity_pressure(model: nn.Module, weight: float, micro_batches: int) -> list[Any]:
    """Add the gradient of ``weight * mean_i alpha_i`` to each gate's gradient, once per optimizer step (each of the
    step's ``micro_batches`` backward passes adds its share). Returns the hook handles."""
    ms = mixers(model)
    n = len(ms)

    def hook_for(m: MixedAttention):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            a = m.alpha.detach()
            return grad + weight / n * m.scale * a * (1 - a) / micro_batches

        return hook

    return [m.mix_logit.register_hook(hook_for(m)) for m in ms]


def gate_values(model: nn.Module) -> list[float]:
    return [float(m.alpha) for m in mixers(model)]
