"""KDA operators. ``kda_chunk`` / ``kda_recurrent`` pick fla's Triton kernels on CUDA and our pure-PyTorch
implementations elsewhere (or when ``GENDISTILL_KDA_BACKEND=torch``). All take already-activated inputs:
q, k L2-normalised ``[B, T, H, K]``, v ``[B, T, H, V]``, g log decay ``[B, T, H, K]``, beta ``[B, T, H]`` in (0, 1),
state ``[N, H, K, V]`` float32."""

from __future__ import annotations

import torch

from gendistill.ops.backend import fla_split_guard, use_fla
from gendistill.ops.kda.chunk import chunk_kda as torch_chunk_kda
from gendistill.ops.kda.gate import bounded_gate_init, kda_gate, l2norm
from gendistill.ops.kda.recurrent import recurrent_kda as torch_recurrent_kda
from gendistill.ops.varlen import call_as_one_row

__all__ = ["kda_chunk", "kda_recurrent", "kda_from_projections", "kda_gate", "bounded_gate_init", "l2norm"]


def kda_chunk(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Prefill / training path: fla ``chunk_kda`` on CUDA, :func:`torch_chunk_kda` elsewhere. On fla a padded batch
    (no ``cu_seqlens``) runs as one packed row with a bound every row (:func:`gendistill.ops.varlen.call_as_one_row`):
    every batch then has the kernel keys of a packed training row."""
    if use_fla(q):
        from fla.ops.kda import chunk_kda  # noqa: PLC0415  (GPU kernels: CUDA only)

        return call_as_one_row(chunk_kda, (q, k, v, g.float(), beta), scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return torch_chunk_kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def kda_recurrent(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Decode path (a few tokens): fla ``fused_recurrent_kda`` on CUDA, :func:`torch_recurrent_kda` elsewhere."""
    if use_fla(q):
        from fla.ops.kda import fused_recurrent_kda  # noqa: PLC0415  (GPU kernels: CUDA only)

        return fused_recurrent_kda(q, k, v, g.float(), beta, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return torch_recurrent_kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def kda_from_projections(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    f: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    recurrent: bool,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    pad_mask: torch.Tensor | None = None,
    gate_lower_bound: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA from raw (pre-activation) inputs, as the mixer produces them.

    Args:
        q, k: ``[B, T, H, K]`` before L2 normalisation.  v: ``[B, T, H, V]``.
        f: ``[B, T, H, K]`` raw decay-gate input; the gate is :func:`kda_gate` of it: ``-exp(A_log) *
            softplus(f + dt_bias)``, or ``lb * sigmoid(exp(A_log) * (f + dt_bias))`` with ``gate_lower_bound=lb``.
        b: ``[B, T, H]`` beta logits (beta = sigmoid(b)).  A_log: ``[H]``.  dt_bias: ``[H * K]``.
        recurrent: use the step-by-step kernel (decode) instead of the chunked one.
        pad_mask: ``[B, T]`` 1 for tokens, 0 for padding; padded tokens get beta = 0 and no decay.
        gate_lower_bound: ``None`` (the paper's gate) or fla's bounded gate's lower bound in ``[-5, 0)``.

    On CUDA with fla and no padding, normalisation, gate and sigmoid are fused into fla's kernels (no ``[B, T, H, K]``
    float32 gate is materialised; a bounded gate takes ``chunk_kda``'s ``safe_gate=True`` path, and
    ``fused_recurrent_kda`` its ``lower_bound``); otherwise they are applied here and the activated inputs go to
    :func:`kda_chunk` / :func:`kda_recurrent`. The fused call keeps its rows (the kernel keys of the shipped
    configurations, and of a captured prefill), which fla's intra-card split never takes (it splits packed calls
    only: slower than the serial pass on an H100, docs/bench.md); a packed one of more than one sequence runs with
    the split off (:func:`gendistill.ops.backend.fla_split_guard`).
    """
    if pad_mask is None and use_fla(q):
        from fla.ops.kda import chunk_kda, fused_recurrent_kda  # noqa: PLC0415  (GPU kernels: CUDA only)

        bounded = {} if gate_lower_bound is None else {"lower_bound": gate_lower_bound}
        if not recurrent and bounded:
            bounded["safe_gate"] = True  # fla's faster intra-chunk kernel; it computes the gate above exactly
        fused = dict(A_log=A_log, dt_bias=dt_bias, initial_state=initial_state, output_final_state=output_final_state,
                     use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, **bounded)
        if recurrent:
            return fused_recurrent_kda(q, k, v, f, b, cu_seqlens=cu_seqlens, **fused)
        with fla_split_guard(cu_seqlens):
            return chunk_kda(q, k, v, f, b, cu_seqlens=cu_seqlens, **fused)
    q = l2norm(q.float()).to(q.dtype)
    k = l2norm(k.float()).to(k.dtype)
    g = kda_gate(f, A_log, dt_bias, lower_bound=gate_lower_bound)
    beta = torch.sigmoid(b.float())
    if pad_mask is not None:
        m = pad_mask.to(g.dtype)
        g, beta = g * m[..., None, None], beta * m[..., None]
    if use_fla(q):
        beta = beta.to(q.dtype)
    kernel = kda_recurrent if recurrent else kda_chunk
    return kernel(q, k, v, g, beta, initial_state=initial_state, output_final_state=output_final_state,
                  cu_seqlens=cu_seqlens)
