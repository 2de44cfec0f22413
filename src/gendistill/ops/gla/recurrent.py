"""Step-by-step gated linear attention in pure PyTorch: the reference for the chunked form, and the CPU decode path."""

from __future__ import annotations

import torch

from gendistill.ops.varlen import over_sequences


def recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention, one token at a time::

        S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,     o_t = S_t^T (scale * q_t)

    Args:
        q, k: ``[B, T, H, K]``.  v: ``[B, T, H, V]``.
        g: log decay, ``[B, T, H, K]`` (GLA: one per key channel) or ``[B, T, H]`` (one per head: simple GLA, the
            Mamba2 SSD recurrence).
        scale: query scale, default ``K ** -0.5``.  initial_state: ``[N, H, K, V]``.
        cu_seqlens: ``[N + 1]`` packed-sequence boundaries (B = 1); the state restarts at each sequence.

    Returns:
        ``(o [B, T, H, V] in v.dtype, final_state [N, H, K, V] float32/float64 or None)``.
    """
    if cu_seqlens is not None:
        return over_sequences(recurrent_gla, (q, k, v, g), cu_seqlens, initial_state, output_final_state, scale=scale)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.to(dtype) for x in (q, k, v, g))
    if g.dim() == 3:
        g = g.unsqueeze(-1).expand(B, T, H, K)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype).clone()
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        S = S * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S)
    return o.to(out_dtype), (S if output_final_state else None)
