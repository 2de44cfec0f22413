"""Mamba2's SSD (state-space duality, Dao & Gu, 2024) with one head per teacher query head::

    h_t = exp(-exp(A_log) dt_t) h_{t-1} + B_t (dt_t x_t)^T,     y_t = h_t^T (scale * C_t) + D x_t

With ``q = C``, ``k = B``, ``v = dt * x`` and per-head log decay ``g = -exp(A_log) dt`` this is the simple-GLA
recurrence (:mod:`gendistill.ops.gla`) plus the ``D`` skip, so it runs on fla's ``chunk_simple_gla`` /
``fused_recurrent_simple_gla`` kernels on CUDA (fla's own Mamba2 layer needs the separate ``mamba_ssm`` kernels) and on
our pure-PyTorch GLA paths elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gendistill.ops.gla import gla_chunk, gla_recurrent

__all__ = ["mamba2_dt", "mamba2_ssd"]


def mamba2_dt(a: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """Step size ``dt = softplus(a + dt_bias)`` ``[B, T, H]`` in float32 (float64 for float64 input)."""
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    return F.softplus(a.to(dtype) + dt_bias.to(dtype))


def mamba2_ssd(
    C: torch.Tensor,
    B: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    *,
    recurrent: bool = False,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Args:
        C, B: ``[B, T, H, N]`` (read-out and write-in vectors; N the state size).  x: ``[B, T, H, P]``.
        dt: ``[B, T, H]`` step size (> 0; 0 at padded tokens makes them no-ops).  A_log, D: ``[H]``.
        recurrent: step-by-step kernel (decode) instead of the chunked one.  scale: C scale, default ``N ** -0.5``.
        initial_state: ``[N_seq, H, N, P]``.  cu_seqlens: ``[N_seq + 1]`` packed-sequence boundaries (batch 1).

    Returns:
        ``(y [B, T, H, P] in x.dtype, final_state [N_seq, H, N, P] float32 or None)``.
    """
    g = -A_log.to(dt.dtype).exp() * dt
    v = (x.to(dt.dtype) * dt.unsqueeze(-1)).to(x.dtype)
    kernel = gla_recurrent if recurrent else gla_chunk
    y, state = kernel(C, B, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                      cu_seqlens=cu_seqlens)
    # the skip term in float32 at least (D is a float32 parameter: in bf16, 1.003 would round to 1.0), rounded once
    acc = torch.promote_types(x.dtype, torch.float32)
    return (y.to(acc) + D.to(acc)[:, None] * x.to(acc)).to(x.dtype), state
