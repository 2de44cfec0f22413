"""KDA operators. ``kda_chunk`` / ``kda_recurrent`` pick fla's Triton kernels on CUDA and our pure-PyTorch
implementations elsewhere (or when ``GENDISTILL_KDA_BACKEND=torch``). All take already-activated inputs:
q, k L2-normalised ``[B, T, H, K]``, v ``[B, T, H, V]``, g log decay ``[B, T, H, K]``, beta ``[B, T, H]`` in (0, 1),
state ``[N, H, K, V]`` float32."""

from __future__ import annotations

import functools
import os
import warnings

import torch

from gendistill.ops.kda.chunk import chunk_kda as torch_chunk_kda
from gendistill.ops.kda.gate import kda_gate, l2norm
from gendistill.ops.kda.recurrent import recurrent_kda as torch_recurrent_kda

__all__ = ["kda_chunk", "kda_recurrent", "kda_from_projections", "kda_gate", "l2norm", "fla_available", "use_fla"]


@functools.cache
def fla_available() -> bool:
    """True when fla's KDA kernels can run here (fla importable and CUDA present)."""
    if not torch.cuda.is_available():
        return False
    from gendistill.ops.fla_configs import activate  # noqa: PLC0415

    activate()  # shipped kernel configurations for this GPU: no minutes of autotuning on a fresh machine
    try:
        from fla.ops.kda import chunk_kda, fused_recurrent_kda  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the installation
        if os.environ.get("GENDISTILL_KDA_BACKEND") != "torch":
            warnings.warn(f"CUDA is available but fla's KDA kernels cannot be imported ({type(e).__name__}: {e}); "
                          "falling back to the pure-PyTorch KDA, which is much slower and uses far more memory. "
                          "Install flash-linear-attention>=0.6 (or set GENDISTILL_KDA_BACKEND=torch to silence this).",
                          stacklevel=2)
        return False
    return True


def use_fla(x: torch.Tensor) -> bool:
    backend = os.environ.get("GENDISTILL_KDA_BACKEND", "auto")
    if backend == "torch":
        return False
    if backend == "fla" and not (x.is_cuda and fla_available()):
        raise RuntimeError("GENDISTILL_KDA_BACKEND=fla needs CUDA tensors and flash-linear-attention installed")
    return x.is_cuda and fla_available()


def kda_chunk(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Prefill / training path: fla ``chunk_kda`` on CUDA, :func:`torch_chunk_kda` elsewhere."""
    if use_fla(q):
        from fla.ops.kda import chunk_kda

        return chunk_kda(q, k, v, g.float(), beta, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return torch_chunk_kda(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def kda_recurrent(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Decode path (a few tokens): fla ``fused_recurrent_kda`` on CUDA, :func:`torch_recurrent_kda` elsewhere."""
    if use_fla(q):
        from fla.ops.kda import fused_recurrent_kda

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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KDA from raw (pre-activation) inputs, as the mixer produces them.

    Args:
        q, k: ``[B, T, H, K]`` before L2 normalisation.  v: ``[B, T, H, V]``.
        f: ``[B, T, H, K]`` raw decay-gate input; the gate is ``-exp(A_log) * softplus(f + dt_bias)``.
        b: ``[B, T, H]`` beta logits (beta = sigmoid(b)).  A_log: ``[H]``.  dt_bias: ``[H * K]``.
        recurrent: use the step-by-step kernel (decode) instead of the chunked one.
        pad_mask: ``[B, T]`` 1 for tokens, 0 for padding; padded tokens get beta = 0 and no decay.

    On CUDA with fla and no padding, normalisation, gate and sigmoid are fused into fla's kernels (no ``[B, T, H, K]``
    float32 gate is materialised); otherwise they are applied here and the activated inputs go to
    :func:`kda_chunk` / :func:`kda_recurrent`.
    """
    if pad_mask is None and use_fla(q):
        from fla.ops.kda import chunk_kda, fused_recurrent_kda

        kernel = fused_recurrent_kda if recurrent else chunk_kda
        return kernel(q, k, v, f, b, A_log=A_log, dt_bias=dt_bias, initial_state=initial_state,
                      output_final_state=output_final_state, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                      use_beta_sigmoid_in_kernel=True, cu_seqlens=cu_seqlens)
    q = l2norm(q.float()).to(q.dtype)
    k = l2norm(k.float()).to(k.dtype)
    g = kda_gate(f, A_log, dt_bias)
    beta = torch.sigmoid(b.float())
    if pad_mask is not None:
        m = pad_mask.to(g.dtype)
        g, beta = g * m[..., None, None], beta * m[..., None]
    if use_fla(q):
        beta = beta.to(q.dtype)
    kernel = kda_recurrent if recurrent else kda_chunk
    return kernel(q, k, v, g, beta, initial_state=initial_state, output_final_state=output_final_state,
                  cu_seqlens=cu_seqlens)
