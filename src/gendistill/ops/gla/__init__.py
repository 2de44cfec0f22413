"""Gated linear attention operators (GLA, Yang et al., 2023; and with one decay per head, "simple GLA", which is the
recurrence of Mamba2's SSD)::

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T,     o_t = S_t^T (scale * q_t)

``gla_chunk`` / ``gla_recurrent`` pick fla's Triton kernels on CUDA (``chunk_gla`` / ``fused_recurrent_gla`` for a
channel-wise ``g [B, T, H, K]``, ``chunk_simple_gla`` / ``fused_recurrent_simple_gla`` for a per-head ``g [B, T, H]``)
and our pure-PyTorch implementations elsewhere (or when ``GENDISTILL_KDA_BACKEND=torch``). q, k ``[B, T, H, K]``,
v ``[B, T, H, V]``, g log decay (<= 0), state ``[N, H, K, V]`` float32.
"""

from __future__ import annotations

import torch

from gendistill.ops.gla.chunk import chunk_gla as torch_chunk_gla
from gendistill.ops.gla.recurrent import recurrent_gla as torch_recurrent_gla
from gendistill.ops.backend import use_fla
from gendistill.ops.varlen import call_as_one_row

__all__ = ["gla_chunk", "gla_recurrent", "torch_chunk_gla", "torch_recurrent_gla"]


def gla_chunk(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Prefill / training path: fla's chunked kernels on CUDA (a padded batch as one packed row:
    :func:`gendistill.ops.varlen.call_as_one_row`), :func:`torch_chunk_gla` elsewhere."""
    if use_fla(q):
        kw = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        if g.dim() == 3:
            from fla.ops.simple_gla import chunk_simple_gla  # noqa: PLC0415  (GPU kernels: CUDA only)

            return call_as_one_row(chunk_simple_gla, (q, k, v, g.float()), **kw)
        from fla.ops.gla import chunk_gla  # noqa: PLC0415  (GPU kernels: CUDA only)

        return call_as_one_row(chunk_gla, (q, k, v, g.float()), **kw)
    return torch_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                           cu_seqlens=cu_seqlens)


def gla_recurrent(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Decode path (a few tokens): fla's fused recurrent kernels on CUDA, :func:`torch_recurrent_gla` elsewhere."""
    if use_fla(q):
        kw = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        if g.dim() == 3:
            from fla.ops.simple_gla import fused_recurrent_simple_gla  # noqa: PLC0415  (GPU kernels: CUDA only)

            return fused_recurrent_simple_gla(q, k, v, g=g.float(), **kw)
        from fla.ops.gla import fused_recurrent_gla  # noqa: PLC0415  (GPU kernels: CUDA only)

        return fused_recurrent_gla(q, k, v, gk=g.float(), **kw)
    return torch_recurrent_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens)
