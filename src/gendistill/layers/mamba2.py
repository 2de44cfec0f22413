"""Mamba2 token mixer (Dao & Gu, 2024) shaped like the teacher attention it replaces, as in distilling attention into
Mamba (Wang et al., 2024, "The Mamba in the Llama"): the SSD read-out ``C`` is the teacher's query, the write-in ``B``
its key, ``x`` its value and ``out_proj`` its ``o_proj`` (see :class:`gendistill.layers.base.TeacherShapedMixer`).

Parameters: the shared ``q_proj`` (C), ``k_proj`` (B), ``v_proj`` (x), ``o_proj``, ``*_conv1d``, ``g_proj`` (the
``z`` gate), ``o_norm``, plus Mamba2's ``dt_proj`` (the ``dt`` slice of Mamba2's ``in_proj``), ``A_log``, ``dt_bias``
and ``D``. Differences from Mamba2: one SSD head per teacher query head (state ``[head_dim, head_dim]``, B/C shared per
GQA group as Mamba2's ``ngroups``), C scaled by ``1 / sqrt(head_dim)`` like the teacher's attention logits, and the
gate applied after the per-head RMSNorm (KDA's gated norm) rather than before.
"""

from __future__ import annotations

import torch
from torch import nn

from gendistill.layers.base import TeacherShapedMixer
from gendistill.ops.mamba2 import mamba2_dt, mamba2_ssd


class Mamba2(TeacherShapedMixer):
    """``h_t = exp(-exp(A_log) dt_t) h_{t-1} + k_t (dt_t v_t)^T``, ``o_t = h_t^T q_t / sqrt(K) + D v_t``, with
    ``dt = softplus(dt_proj(x) + dt_bias)`` ``[B, T, H]``."""

    fp32_parameters = ("A_log", "dt_bias", "D")
    fla_gated_dqkwg_backward = True  # fla's chunk_simple_gla backward
    fla_dqkwg_fp32_states = True  # its states float32: fla's TileLang backend declines it

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        H = self.num_heads
        self.dt_proj = nn.Linear(self.hidden_size, H, bias=False)
        self.A_log = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.reset_mixer_parameters()

    @torch.no_grad()
    def reset_decay_parameters(self, initializer_range: float) -> None:
        """Mamba2's own initialisation: ``A_log = log U(1, 16)``, ``dt`` log-uniform in [1e-3, 1e-1], ``D = 1``;
        N(0, ``initializer_range``) for ``dt_proj``."""
        self.dt_proj.weight.normal_(0.0, initializer_range)
        self.init_mamba_decay(self.A_log, self.dt_bias)
        self.D.fill_(1.0)
        self.D._no_weight_decay = True

    def input_projections(self) -> tuple[nn.Linear, ...]:
        return (self.dt_proj, *super().input_projections())

    def mix(self, q, k, v, x, *, recurrent, initial_state, output_final_state, cu_seqlens, pad_mask):
        dt = mamba2_dt(x(self.dt_proj), self.dt_bias)
        if pad_mask is not None:  # dt = 0: no decay and no write at padded tokens
            dt = dt * pad_mask.to(dt.dtype)[..., None]
        return mamba2_ssd(q, k, v, dt, self.A_log, self.D, recurrent=recurrent, initial_state=initial_state,
                          output_final_state=output_final_state, cu_seqlens=cu_seqlens)
