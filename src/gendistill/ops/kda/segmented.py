"""Segment-parallel KDA prefill: one long sequence cut into segments whose work runs side by side, exactly.

A chunked KDA kernel walks a sequence's chunks one after another, parallel only over batch and heads: at batch 1 a
128K-token prompt keeps a few of a GPU's streaming multiprocessors busy. The KDA state update is affine in the state,
column by column (``S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T``, ``S`` of shape
``[K, V]``: column ``j`` of ``S_t`` depends only on column ``j`` of ``S_{t-1}`` and ``v_t[j]``), so over one segment

    S_end = P S_start + F,     P = prod_t (I - beta_t k_t k_t^T) Diag(exp(g_t))  [K, K],   F = S_end when S_start = 0.

Both come from one run of the kernel over every segment at once (segments as packed sequences, ``cu_seqlens``) with
``K`` extra value columns: values ``[v | 0]`` from the state ``[0 | I]`` end in ``[F | P]``. The segments' true start
states then follow by ``S_i = P_{i-1} S_{i-1} + F_{i-1}`` (``N`` small matrix products), and a second run over every
segment at once, each from its true start state, gives the outputs. Nothing is approximated: the outputs are the
serial kernel's up to floating-point rounding, at about three times the serial arithmetic (the first run carries
``V + K`` value columns, and its intermediates take about ``(V + K) / V`` times the serial call's memory) spread over
``N`` times the parallel work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: ``run(v, initial_state, cu_seqlens, output_final_state) -> (o, final_state or None)``: a chunked KDA over packed
#: sequences (batch 1) with everything but the values and the start states fixed; ``v`` ``[1, T, H, V']``, states
#: ``[N, H, K, V']`` float32.
KdaRun = Callable[[torch.Tensor, torch.Tensor, torch.LongTensor, bool], tuple[torch.Tensor, torch.Tensor | None]]


def segment_bounds(length: int, segment_tokens: int) -> torch.LongTensor:
    """``cu_seqlens`` ``[N + 1]`` (on the host) of ``length`` tokens cut into segments of ``segment_tokens`` (the last
    may be shorter)."""
    if segment_tokens < 1:
        raise ValueError(f"segment_tokens must be >= 1, got {segment_tokens}")
    cuts = list(range(0, length, segment_tokens)) + [length]
    return torch.tensor(cuts, dtype=torch.long)


def segmented_prefill(
    run: KdaRun,
    v: torch.Tensor,
    key_dim: int,
    cu_seqlens: torch.LongTensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KDA over one sequence cut at ``cu_seqlens`` into ``N`` segments, equal to ``run`` over the whole sequence.

    Args:
        run: the chunked kernel with q, k, gate and beta (or their raw projections) of the whole sequence bound; see
            :data:`KdaRun`.
        v: ``[1, T, H, V]`` values.  key_dim: ``K``.  cu_seqlens: ``[N + 1]`` segment boundaries, ``0 ... T``.
        initial_state: ``[1, H, K, V]`` state before the sequence, or None (zeros).

    Returns:
        ``(o [1, T, H, V], final_state [1, H, K, V])``, the state in float32 (float64 for float64 values).
    """
    B, T, H, V = v.shape
    if B != 1:
        raise ValueError(f"segmented prefill runs one sequence (batch 1), got batch {B}")
    N, K, dev = cu_seqlens.numel() - 1, key_dim, v.device
    sdt = torch.float64 if v.dtype == torch.float64 else torch.float32  # the kernels' state precision
    start0 = torch.zeros(N, H, K, V + K, dtype=sdt, device=dev)
    start0[..., V:] = torch.eye(K, dtype=sdt, device=dev)
    _, ends = run(torch.cat([v, v.new_zeros(1, T, H, K)], dim=-1), start0, cu_seqlens, True)  # [N, H, K, V + K]
    ends = ends.to(sdt)
    F, P = ends[..., :V], ends[..., V:]
    s = v.new_zeros(H, K, V, dtype=sdt) if initial_state is None else initial_state[0].to(sdt)
    starts = []
    for i in range(N):  # N small products: [H, K, K] @ [H, K, V]
        starts.append(s)
        s = P[i] @ s + F[i]
    o, _ = run(v, torch.stack(starts), cu_seqlens, False)
    return o, s.unsqueeze(0)
