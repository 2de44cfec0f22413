"""Which kernels the operators run: fla's Triton kernels on CUDA (when importable), gendistill's pure-PyTorch forms
elsewhere, or as ``GENDISTILL_KDA_BACKEND`` (``auto``, ``torch``, ``fla``) says."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator

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


#: fla's switch of its intra-card context-parallel backend (``fla.ops.common.backends.intracard``); fla reads it at
#: every dispatched call
FLA_INTRACARD_ENV = "FLA_INTRACARD_CP"


@contextlib.contextmanager
def fla_intracard(enabled: bool = True) -> Iterator[None]:
    """fla's intra-card context parallelism on (or off) for the block: a long prefill's chunked delta-rule state pass
    split across the card instead of walked one chunk after another.

    fla 0.6 (``fla/ops/common/intracard_cp.py``) cuts each long packed sequence at chunk boundaries into up to
    ``FLA_INTRACARD_MAX_SPLITS`` (32) subsequences, summarises every subsequence as an affine map of its start state
    (one parallel pre-scan over the already WY-transformed chunks), chains the maps in float32 and then runs the
    subsequences side by side from their true start states: the same function as the serial pass up to the chain's
    rounding, with only the state pass (not the intra-chunk work) done twice. fla applies it only under
    ``torch.inference_mode()``, only to packed calls (``cu_seqlens``: gendistill's chunked KDA and Gated DeltaNet
    calls always pass them, :func:`gendistill.ops.varlen.call_as_one_row`), never inside a CUDA-graph capture (it
    reads the bounds on the host), and only to sequences long enough: with ``H`` heads on a card of ``S``
    multiprocessors the subsequences are ``max(T / max(4, S // (2 H)), 8192)`` tokens long and a sequence is split
    from three of them (24K tokens at 16 heads on an H100 or H200).

    fla reads its switch, the environment variable ``FLA_INTRACARD_CP``, at every call; this sets it for the block
    and restores what was there after, so it is process-wide while the block runs (not for concurrent threads).
    Measured against the serial pass by ``gendistill bench`` (``ttft_intracard_ms``) and ``benchmarks/kda_kernels.py``.
    """
    before = os.environ.get(FLA_INTRACARD_ENV)
    os.environ[FLA_INTRACARD_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FLA_INTRACARD_ENV, None)
        else:
            os.environ[FLA_INTRACARD_ENV] = before


__all__ = ["FLA_INTRACARD_ENV", "fla_available", "fla_intracard", "use_fla"]
