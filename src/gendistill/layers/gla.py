"""Gated linear attention (GLA, Yang et al., 2023) token mixer: a channel-wise decaying linear attention without the
delta rule, shaped like the teacher attention it replaces (see :class:`gendistill.layers.base.TeacherShapedMixer`).

The decay follows fla's ``GatedLinearAttention``: a low-rank ``gk_proj`` and ``g = logsigmoid(gk_proj(x) + gk_bias) /
gla_gate_logit_normalizer`` (16). q and k are used as the teacher produces them (fla's default: no feature map, no
normalisation), with the ``1 / sqrt(K)`` attention scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.layers.base import TeacherShapedMixer
from gendistill.ops.gla import gla_chunk, gla_recurrent


class GatedLinearAttention(TeacherShapedMixer):
    """``S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(K)``; ``g [B, T, H, K]``.

    Extra config fields: ``kda_decay_rank`` (inner rank of ``gk_proj``), ``gla_gate_logit_normalizer``."""

    fp32_parameters = ("gk_bias",)

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.gate_logit_normalizer = config.gla_gate_logit_normalizer
        self.gk_proj = nn.Sequential(nn.Linear(self.hidden_size, config.kda_decay_rank, bias=False),
                                     nn.Linear(config.kda_decay_rank, self.num_heads * self.head_dim, bias=False))
        # The decay bias (the bias of fla's second gk_proj matrix) is a parameter of the mixer itself, like KDA's
        # dt_bias: kept in float32, and it lets transformers' weight initialisation reach this module at all (it skips
        # custom-code modules that hold no parameter of their own, which would leave the identity convs/gate unset).
        self.gk_bias = nn.Parameter(torch.empty(self.num_heads * self.head_dim, dtype=torch.float32))
        self.reset_mixer_parameters()

    @torch.no_grad()
    def reset_decay_parameters(self, initializer_range: float) -> None:
        """N(0, ``initializer_range``) weights for ``gk_proj`` and a zero ``gk_bias``: at initialisation every channel
        decays by about ``logsigmoid(0) / 16 = -0.043`` per token (a memory of a few dozen tokens)."""
        for lin in self.gk_proj:
            lin.weight.normal_(0.0, initializer_range)
        self.gk_bias.zero_()
        self.gk_bias._no_weight_decay = True

    def input_projections(self) -> tuple[nn.Linear, ...]:
        return (self.gk_proj[0], *super().input_projections())

    def mix(self, q, k, v, x, *, recurrent, initial_state, output_final_state, cu_seqlens, pad_mask):
        B, T, H, K = q.shape
        gk = (x(self.gk_proj).float() + self.gk_bias.float()).view(B, T, H, K)
        g = F.logsigmoid(gk) / self.gate_logit_normalizer
        if pad_mask is not None:  # padded tokens: no decay, no write (k after the conv may carry its bias)
            m = pad_mask.to(g.dtype)[..., None, None]
            g, k = g * m, k * m.to(k.dtype)
        kernel = gla_recurrent if recurrent else gla_chunk
        return kernel(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state,
                      cu_seqlens=cu_seqlens)
