"""Step-by-step KDA recurrence in pure PyTorch: the reference every other path is checked against, and the CPU
decode path (one or a few tokens at a time)."""

from __future__ import annotations

import torch

from gendistill.ops.varlen import over_sequences


def recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA, one token at a time::

        S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T (scale * q_t)

    Inputs are already activated (q, k L2-normalised, ``g`` in log space, ``beta`` in (0, 1)), as for
    ``fla.ops.kda.naive.naive_recurrent_kda``.

    Args:
        q, k: ``[B, T, H, K]``.  v: ``[B, T, H, V]``.  g: ``[B, T, H, K]``.  beta: ``[B, T, H]``.
        scale: query scale, default ``K ** -0.5``.
        initial_state: ``[N, H, K, V]`` (N = B, or the number of sequences when ``cu_seqlens`` is given).
        cu_seqlens: ``[N + 1]`` cumulative sequence lengths of packed sequences (requires B = 1); the state is reset
            to ``initial_state[n]`` (or zero) at each sequence start.

    Returns:
        ``(o [B, T, H, V] in v.dtype, final_state [N, H, K, V] float32/float64 or None)``.
    """
    if cu_seqlens is not None:
        return over_sequences(recurrent_kda, (q, k, v, g, beta), cu_seqlens, initial_state, output_final_state,
                              scale=scale)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype).clone()
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        S = S * g[:, t].exp()[..., None]
        delta = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S))
        S = S + k[:, t, :, :, None] * delta[:, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S)
    return o.to(out_dtype), (S if output_final_state else None)


