"""Chunked KDA in pure PyTorch: the CPU path for prefill and training (autograd works through it).

Within a chunk of C tokens the delta rule is solved in closed form (a unit lower-triangular system, the "WY"
representation); across chunks the state is carried sequentially. Every decay factor is formed as
``exp(G_i - G_j)`` with ``j <= i`` (``G`` the in-chunk cumulative log decay), so no exponent is ever positive and
nothing overflows however strong the decay.

Derivation for one chunk with incoming state ``S0`` (``gamma_i = exp(G_i)``, ``delta_j`` the effective update)::

    delta_i = beta_i (v_i - S0^T (gamma_i * k_i) - sum_{j<i} A_ij delta_j),   A_ij = k_i^T Diag(gamma_i / gamma_j) k_j
    =>  (I + diag(beta) tril(A, -1)) Delta = diag(beta) (V - (K * gamma) S0)
    o_i   = S0^T (gamma_i * q_i) + sum_{j<=i} (q_i^T Diag(gamma_i / gamma_j) k_j) delta_j
    S_C   = Diag(gamma_C) S0 + sum_j Diag(gamma_C / gamma_j) k_j delta_j^T
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gendistill.ops.varlen import over_sequences

DEFAULT_CPU_CHUNK = 32


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    chunk_size: int = DEFAULT_CPU_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked KDA; same contract as :func:`gendistill.ops.kda.recurrent.recurrent_kda`.

    Args:
        q, k: ``[B, T, H, K]`` (L2-normalised).  v: ``[B, T, H, V]``.  g: ``[B, T, H, K]`` log decay.
        beta: ``[B, T, H]`` in (0, 1).  initial_state: ``[N, H, K, V]``.  cu_seqlens: ``[N + 1]`` (B = 1).
        chunk_size: tokens per chunk; any length works (the tail is padded with no-op tokens).

    Returns:
        ``(o [B, T, H, V] in v.dtype, final_state [N, H, K, V] or None)``. Computation is float32, or float64 when the
        inputs are float64.
    """
    if cu_seqlens is not None:
        return over_sequences(_chunk_dense, (q, k, v, g, beta), cu_seqlens, initial_state, output_final_state,
                              scale=scale, chunk_size=chunk_size)
    return _chunk_dense(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, chunk_size=chunk_size)


def _chunk_dense(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, chunk_size=DEFAULT_CPU_CHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    pad = (-T) % C
    # [B, T, H, X] -> [B, H, N, C, X]; padded tail tokens have k = v = 0, g = 0 (no decay) and beta = 0: no-ops.
    q, k, v, g = (_to_chunks(x.to(dtype), C, pad) for x in (q, k, v, g))  # [B, H, N, C, X]
    beta = _to_chunks(beta.to(dtype).unsqueeze(-1), C, pad).squeeze(-1)  # [B, H, N, C]
    q = q * scale
    G = g.cumsum(-2)
    N = q.shape[2]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    incl = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = incl.clone().fill_diagonal_(False) if C > 0 else incl
    eye = torch.eye(C, dtype=dtype, device=q.device)
    outs = []
    for n in range(N):
        qn, kn, vn, Gn, bn = q[:, :, n], k[:, :, n], v[:, :, n], G[:, :, n], beta[:, :, n]
        # decay[i, j, :] = exp(G_i - G_j) for j <= i, else 0   -> [B, H, C, C, K]
        diff = (Gn.unsqueeze(-2) - Gn.unsqueeze(-3)).masked_fill(~incl[:, :, None], float("-inf"))
        decay = diff.exp()
        A_kk = torch.einsum("bhik,bhijk,bhjk->bhij", kn, decay, kn).masked_fill(~strict, 0.0)
        A_qk = torch.einsum("bhik,bhijk,bhjk->bhij", qn, decay, kn)
        gamma = Gn.exp()
        M = eye + bn.unsqueeze(-1) * A_kk  # unit lower-triangular
        rhs = bn.unsqueeze(-1) * torch.cat([vn, kn * gamma], dim=-1)
        UW = torch.linalg.solve_triangular(M, rhs, upper=False, unitriangular=True)
        U, W = UW[..., :V], UW[..., V:]
        delta = U - W @ S  # [B, H, C, V]
        outs.append((qn * gamma) @ S + A_qk @ delta)
        G_last = Gn[..., -1, :]  # [B, H, K]
        S = S * G_last.exp().unsqueeze(-1) + (kn * (G_last.unsqueeze(-2) - Gn).exp()).transpose(-1, -2) @ delta
    o = torch.stack(outs, dim=2) if outs else q.new_zeros(B, H, 0, C, V)  # [B, H, N, C, V]
    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)


def _to_chunks(x: torch.Tensor, C: int, pad: int) -> torch.Tensor:
    """``[B, T, H, X]`` -> ``[B, H, N, C, X]``, zero-padding T up to a multiple of C."""
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
    B, Tp, H, X = x.shape
    return x.reshape(B, Tp // C, C, H, X).permute(0, 3, 1, 2, 4)
