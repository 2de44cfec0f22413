"""KDA operators. ``kda_chunk`` / ``kda_recurrent`` pick fla's Triton kernels on CUDA and our pure-PyTorch
implementations elsewhere (or when ``GENDISTILL_KDA_BACKEND=torch``). All take already-activated inputs:
q, k L2-normalised ``[B, T, H, K]``, v ``[B, T, H, V]``, g log decay ``[B, T, H, K]``, beta ``[B, T, H]`` in (0, 1),
state ``[N, H, K, V]`` float32."""

from __future__ import annotations

import functools
import os

import torch

from gendistill.ops.kda.chunk import chunk_kda as torch_chunk_kda
from gendistill.ops.kda.gate import kda_gate, l2norm
from gendistill.ops.kda.recurrent import recurrent_kda as torch_recurrent_kda

__all__ = ["kda_chunk", "kda_recurrent", "kda_gate", "l2norm", "fla_available", "use_fla"]


@functools.cache
def fla_available() -> bool:
    """True when fla's KDA kernels can run here (fla importable and CUDA present)."""
    if not torch.cuda.is_available():
        return False
    try:
        from fla.ops.kda import chunk_kda, fused_recurrent_kda  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
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
