"""Kimi Delta Attention (KDA) token mixer, shaped like the teacher attention it replaces.

Parameter names follow fla's ``KimiDeltaAttention`` (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``q_conv1d``/``k_conv1d``/``v_conv1d``, ``f_proj``, ``b_proj``, ``g_proj``, ``o_norm``, ``A_log``, ``dt_bias``), so a
converter to fla's layout is a rename. Differences from fla's layer, all following the paper (§2): k/v may keep the
teacher's GQA head count and be repeated to the query heads at run time (``kda_kv_mode="repeat"``), the short convs
have a bias and no activation by default, and the output gate defaults to SiLU (identity at initialisation).
The teacher-shaped projections, convs, padding, packing, cache and output norm are
:class:`gendistill.layers.base.TeacherShapedMixer`'s, shared with the other mixers.
"""

from __future__ import annotations

import torch
from torch import nn

from gendistill.layers.base import RECURRENT_MAX_TOKENS, TeacherShapedMixer
from gendistill.ops.kda import bounded_gate_init, kda_from_projections

__all__ = ["KimiDeltaAttention", "RECURRENT_MAX_TOKENS"]


class KimiDeltaAttention(TeacherShapedMixer):
    """KDA mixer for one layer.

    Config fields read (see :class:`gendistill.models.hybrid.HybridConfig`): those of
    :class:`~gendistill.layers.base.TeacherShapedMixer` plus ``kda_decay_rank`` and ``kda_gate_lower_bound``
    (``None``: the paper's decay gate; a number in ``[-5, 0)``: fla's bounded gate, see
    :func:`gendistill.ops.kda.kda_gate`).
    """

    fp32_parameters = ("A_log", "dt_bias")

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        D, H, K = self.hidden_size, self.num_heads, self.head_dim
        self.f_proj = nn.Sequential(nn.Linear(D, config.kda_decay_rank, bias=False),
                                    nn.Linear(config.kda_decay_rank, H * K, bias=False))
        self.b_proj = nn.Linear(D, H, bias=False)
        self.gate_lower_bound = getattr(config, "kda_gate_lower_bound", None)
        self.A_log = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(H * K, dtype=torch.float32))
        self.reset_mixer_parameters()

    # ------------------------------------------------------------------------------------------------ initialisation
    def reset_kda_parameters(self, initializer_range: float = 0.02) -> None:
        """Everything the teacher does not provide; see :meth:`TeacherShapedMixer.reset_mixer_parameters`."""
        self.reset_mixer_parameters(initializer_range)

    @torch.no_grad()
    def reset_decay_parameters(self, initializer_range: float) -> None:
        """Mamba-style ``A_log = log U(1, 16)`` and ``dt_bias = softplus^-1(dt)``, ``dt`` log-uniform in
        [1e-3, 1e-1], and N(0, ``initializer_range``) for ``f_proj`` and ``b_proj``. With a bounded gate the same
        draws are mapped by :func:`gendistill.ops.kda.bounded_gate_init` (``A_log = 0``, ``dt_bias`` such that the
        bounded gate at ``f = 0`` equals the paper gate's initial decay), so a bounded student starts from the decays
        the exact student of the same seed starts from."""
        for lin in (self.f_proj[0], self.f_proj[1], self.b_proj):
            lin.weight.normal_(0.0, initializer_range)
        self.init_mamba_decay(self.A_log, self.dt_bias)
        if self.gate_lower_bound is not None:
            A_log, dt_bias = bounded_gate_init(self.A_log, self.dt_bias, self.gate_lower_bound)
            self.A_log.copy_(A_log)
            self.dt_bias.copy_(dt_bias)

    # ------------------------------------------------------------------------------------------------------- forward
    def input_projections(self) -> tuple[nn.Linear, ...]:
        return (self.f_proj[0], self.b_proj, *super().input_projections())

    def mix(self, q, k, v, x, *, recurrent, initial_state, output_final_state, cu_seqlens, pad_mask):
        B, T, H, K = q.shape
        return kda_from_projections(
            q, k, v, x(self.f_proj).view(B, T, H, K), x(self.b_proj), self.A_log, self.dt_bias,
            recurrent=recurrent, initial_state=initial_state, output_final_state=output_final_state,
            cu_seqlens=cu_seqlens, pad_mask=pad_mask, gate_lower_bound=self.gate_lower_bound,
        )
