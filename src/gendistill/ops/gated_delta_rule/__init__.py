"""Gated DeltaNet operators (Yang et al., 2024): the delta rule with one scalar decay per head and token::

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T (scale * q_t)

This is KDA with the channel-wise decay ``g [B, T, H, K]`` tied across K, so the pure-PyTorch paths are KDA's chunked
form and step-by-step reference with ``g`` broadcast over K (exact, not an approximation); on CUDA fla's own Gated
DeltaNet kernels run. Inputs are already activated: q, k L2-normalised ``[B, T, H, K]``, v ``[B, T, H, V]``, g log
decay ``[B, T, H]`` (<= 0), beta ``[B, T, H]`` in (0, 1), state ``[N, H, K, V]`` float32.
"""

from __future__ import annotations

import torch

from gendistill.ops.backend import use_fla
from gendistill.ops.kda.chunk import chunk_kda
from gendistill.ops.kda.gate import kda_gate, l2norm
from gendistill.ops.kda.recurrent import recurrent_kda
from gendistill.ops.varlen import call_as_one_row

__all__ = ["gdn_chunk", "gdn_recurrent", "gdn_gate", "torch_chunk_gdn", "torch_recurrent_gdn"]


def gdn_gate(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head log decay ``g = -exp(A_log[h]) * softplus(a + dt_bias[h])`` (fla's Gated DeltaNet and Mamba2 gate).

    ``a``: ``[B, T, H]`` raw decay input; ``A_log``, ``dt_bias``: ``[H]``. Returns ``[B, T, H]`` float32 (float64 for
    float64 input), every entry <= 0."""
    return kda_gate(a.unsqueeze(-1), A_log, dt_bias).squeeze(-1)


def _channelwise(g: torch.Tensor, K: int) -> torch.Tensor:
    return g.unsqueeze(-1).expand(*g.shape, K)


def torch_chunk_gdn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    chunk_size: int | None = None):
    """Chunked Gated DeltaNet in pure PyTorch (autograd works through it); same contract as fla's
    ``chunk_gated_delta_rule``. Returns ``(o [B, T, H, V], final_state [N, H, K, V] or None)``."""
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    return chunk_kda(q, k, v, _channelwise(g, q.shape[-1]), beta, scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state, cu_seqlens=cu_seqlens, **kw)


def torch_recurrent_gdn(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Step-by-step Gated DeltaNet: the reference, and the CPU decode path."""
    return recurrent_kda(q, k, v, _channelwise(g, q.shape[-1]), beta, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def gdn_chunk(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              use_qk_l2norm_in_kernel: bool = False):
    """Prefill / training: fla ``chunk_gated_delta_rule`` on CUDA (a padded batch as one packed row:
    :func:`gendistill.ops.varlen.call_as_one_row`), :func:`torch_chunk_gdn` elsewhere.
    ``use_qk_l2norm_in_kernel``: q, k are raw and get L2-normalised here (inside fla's kernel on CUDA)."""
    if use_fla(q):
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: PLC0415  (GPU kernels: CUDA only)

        return call_as_one_row(chunk_gated_delta_rule, (q, k, v, g.float(), beta.to(q.dtype)), scale=scale,
                               initial_state=initial_state, output_final_state=output_final_state,
                               cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    q, k = _maybe_l2norm(q, k, use_qk_l2norm_in_kernel)
    return torch_chunk_gdn(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def gdn_recurrent(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                  use_qk_l2norm_in_kernel: bool = False):
    """Decode (a few tokens): fla ``fused_recurrent_gated_delta_rule`` on CUDA, :func:`torch_recurrent_gdn` elsewhere."""
    if use_fla(q):
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule  # noqa: PLC0415  (GPU kernels: CUDA only)

        return fused_recurrent_gated_delta_rule(q, k, v, g.float(), beta=beta.to(q.dtype), scale=scale,
                                                initial_state=initial_state, output_final_state=output_final_state,
                                                cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    q, k = _maybe_l2norm(q, k, use_qk_l2norm_in_kernel)
    return torch_recurrent_gdn(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def _maybe_l2norm(q, k, apply: bool):
    if not apply:
        return q, k
    return l2norm(q.float()).to(q.dtype), l2norm(k.float()).to(k.dtype)
