"""Chunked gated linear attention in pure PyTorch: the CPU path for prefill and training (autograd works through it).

Within a chunk of C tokens the output is a masked, decay-weighted attention product; across chunks the state is
carried sequentially. As in the KDA chunked form, every decay factor is ``exp(G_i - G_j)`` with ``j <= i`` (``G`` the
in-chunk cumulative log decay), so no exponent is positive and strong decay cannot overflow. For one chunk with
incoming state ``S0`` (``gamma_i = exp(G_i)``)::

    o_i = S0^T (gamma_i * scale * q_i) + sum_{j<=i} (scale * q_i^T Diag(gamma_i / gamma_j) k_j) v_j
    S_C = Diag(gamma_C) S0 + sum_j Diag(gamma_C / gamma_j) k_j v_j^T
"""

from __future__ import annotations

import torch

from gendistill.ops.kda.chunk import DEFAULT_CPU_CHUNK, _to_chunks
from gendistill.ops.varlen import over_sequences


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    chunk_size: int = DEFAULT_CPU_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated linear attention; same contract as :func:`gendistill.ops.gla.recurrent.recurrent_gla`
    (``g`` is ``[B, T, H, K]`` or per head ``[B, T, H]``). ``chunk_size``: tokens per chunk, any length works."""
    if cu_seqlens is not None:
        return over_sequences(chunk_gla, (q, k, v, g), cu_seqlens, initial_state, output_final_state, scale=scale,
                              chunk_size=chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    if g.dim() == 3:
        g = g.unsqueeze(-1).expand(B, T, H, K)
    C = chunk_size
    pad = (-T) % C
    # [B, T, H, X] -> [B, H, N, C, X]; the padded tail has k = v = 0 and g = 0: no-ops
    q, k, v, g = (_to_chunks(x.to(dtype), C, pad) for x in (q, k, v, g))
    q = q * scale
    G = g.cumsum(-2)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    outs = []
    for n in range(q.shape[2]):
        qn, kn, vn, Gn = q[:, :, n], k[:, :, n], v[:, :, n], G[:, :, n]
        decay = (Gn.unsqueeze(-2) - Gn.unsqueeze(-3)).masked_fill(~incl[:, :, None], float("-inf")).exp()
        A_qk = torch.einsum("bhik,bhijk,bhjk->bhij", qn, decay, kn)  # [B, H, C, C], zero above the diagonal
        outs.append((qn * Gn.exp()) @ S + A_qk @ vn)
        G_last = Gn[..., -1, :]  # [B, H, K]
        S = S * G_last.exp().unsqueeze(-1) + (kn * (G_last.unsqueeze(-2) - Gn).exp()).transpose(-1, -2) @ vn
    o = torch.stack(outs, dim=2) if outs else q.new_zeros(B, H, 0, C, V)
    o = o.reshape(B, H, -1, V)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)
