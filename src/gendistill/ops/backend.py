"""Which kernels the operators run: fla's Triton kernels on CUDA (when importable), gendistill's pure-PyTorch forms
elsewhere, or as ``GENDISTILL_KDA_BACKEND`` (``auto``, ``torch``, ``fla``) says."""

from __future__ import annotations

import functools
import os
import warnings

import torch

from gendistill.ops.fla_configs import activate, seed_plain_autotuners, seed_row_buckets


@functools.cache
def fla_available() -> bool:
    """True when fla's KDA kernels can run here (fla importable and CUDA present)."""
    if not torch.cuda.is_available():
        return False
    activate()  # shipped kernel configurations for this GPU: no minutes of autotuning on a fresh machine
    try:
        from fla.modules.norm import fused_norm_gate  # noqa: F401, PLC0415  (GPU kernels: is fla usable?)
        from fla.ops.kda import chunk_kda, fused_recurrent_kda  # noqa: F401, PLC0415  (same)
    except Exception as e:  # pragma: no cover - depends on the installation
        if os.environ.get("GENDISTILL_KDA_BACKEND") != "torch":
            warnings.warn(f"CUDA is available but fla's KDA kernels cannot be imported ({type(e).__name__}: {e}); "
                          "falling back to the pure-PyTorch KDA, which is much slower and uses far more memory. "
                          "Install flash-linear-attention>=0.6 (or set GENDISTILL_KDA_BACKEND=torch to silence this).",
                          stacklevel=2)
        return False
    seed_plain_autotuners()  # the gated norm's kernels (Triton's plain autotuner) take the shipped configurations too
    seed_row_buckets()  # every row bucket of the norms' kernels takes the nearest tuned bucket's configuration
    return True


def use_fla(x: torch.Tensor) -> bool:
    """Whether an operator on ``x`` runs fla's kernel (CUDA tensors, fla available, the backend not forced)."""
    backend = os.environ.get("GENDISTILL_KDA_BACKEND", "auto")
    if backend == "torch":
        return False
    if backend == "fla" and not (x.is_cuda and fla_available()):
        raise RuntimeError("GENDISTILL_KDA_BACKEND=fla needs CUDA tensors and flash-linear-attention installed")
    return x.is_cuda and fla_available()


__all__ = ["fla_available", "use_fla"]
