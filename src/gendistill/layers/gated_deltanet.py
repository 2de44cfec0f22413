"""Gated DeltaNet token mixer (Yang et al., 2024): the delta rule with one scalar decay per head, shaped like the
teacher attention it replaces (see :class:`gendistill.layers.base.TeacherShapedMixer`).

Parameter names follow fla's ``GatedDeltaNet`` (``a_proj``, ``b_proj``, ``A_log``, ``dt_bias``, plus the shared
``q/k/v/o_proj``, ``*_conv1d``, ``g_proj``, ``o_norm``). As for KDA, and unlike fla's layer, k/v may keep the teacher's
GQA heads (repeated at run time), the output gate is low-rank and identity at initialisation, and the convs follow
``kda_conv_activation`` (default none).
"""

from __future__ import annotations

import torch
from torch import nn

from gendistill.layers.base import TeacherShapedMixer
from gendistill.ops.gated_delta_rule import gdn_chunk, gdn_gate, gdn_recurrent


class GatedDeltaNet(TeacherShapedMixer):
    """``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(K)``, with
    q, k L2-normalised, ``g = -exp(A_log) * softplus(a_proj(x) + dt_bias)`` ``[B, T, H]`` and
    ``beta = sigmoid(b_proj(x))``."""

    fp32_parameters = ("A_log", "dt_bias")
    fla_gated_dqkwg_backward = True  # fla's chunk_gated_delta_rule backward

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        H = self.num_heads
        self.a_proj = nn.Linear(self.hidden_size, H, bias=False)
        self.b_proj = nn.Linear(self.hidden_size, H, bias=False)
        self.A_log = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.reset_mixer_parameters()

    @torch.no_grad()
    def reset_decay_parameters(self, initializer_range: float) -> None:
        """Mamba-style ``A_log`` / ``dt_bias`` (as KDA), N(0, ``initializer_range``) for ``a_proj`` and ``b_proj``."""
        for lin in (self.a_proj, self.b_proj):
            lin.weight.normal_(0.0, initializer_range)
        self.init_mamba_decay(self.A_log, self.dt_bias)

    def input_projections(self) -> tuple[nn.Linear, ...]:
        return (self.a_proj, self.b_proj, *super().input_projections())

    def mix(self, q, k, v, x, *, recurrent, initial_state, output_final_state, cu_seqlens, pad_mask):
        g = gdn_gate(x(self.a_proj), self.A_log, self.dt_bias)
        beta = torch.sigmoid(x(self.b_proj).float())
        if pad_mask is not None:  # padded tokens: no decay, no write
            m = pad_mask.to(g.dtype)[..., None]
            g, beta = g * m, beta * m
        kernel = gdn_recurrent if recurrent else gdn_chunk
        return kernel(q, k, v, g, beta, initial_state=initial_state, output_final_state=output_final_state,
                      cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=True)
