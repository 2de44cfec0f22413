"""Which kernels the operators run: fla's Triton kernels on CUDA (when importable), gendistill's pure-PyTorch forms
elsewhere, or as ``GENDISTILL_KDA_BACKEND`` (``auto``, ``torch``, ``fla``) says."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator

import torch

from gendistill.ops.fla_configs import activate, prune_hopper_candidates, seed_plain_autotuners, seed_row_buckets
from gendistill.ops.fla_hopper_dqkwg import affected, enabled, key_block, register_hopper_dqkwg, registered


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
    prune_hopper_candidates(torch.cuda.get_device_capability())  # candidates that fail on Hopper never autotuned
    register_hopper_dqkwg()  # Gated DeltaNet's and simple GLA's backward where fla refuses it (fla issue #640)
    return True


def use_fla(x: torch.Tensor) -> bool:
    """Whether an operator on ``x`` runs fla's kernel (CUDA tensors, fla available, the backend not forced)."""
    backend = os.environ.get("GENDISTILL_KDA_BACKEND", "auto")
    if backend == "torch":
        return False
    if backend == "fla" and not (x.is_cuda and fla_available()):
        raise RuntimeError("GENDISTILL_KDA_BACKEND=fla needs CUDA tensors and flash-linear-attention installed")
    return x.is_cuda and fla_available()


def fla_gated_backward_refused(fp32_states: bool = False) -> str | None:
    """Why fla would refuse the backward of its gated ``chunk_bwd_dqkwg`` here (one clause), or None where it runs it.

    fla 0.6.0 raises in that backward (Gated DeltaNet's ``chunk_gated_delta_rule``, simple GLA's, so Mamba2's) on a
    Hopper GPU (H100, H200) with Triton >= 3.4.0 and < 3.7.1, which it says computes wrong results there (fla issue
    #640), unless a backend of its registry takes the call: its TileLang backend (``tilelang`` installed, ``nvcc``
    found, not switched off with ``FLA_TILELANG=0``; it declines calls whose states are float32, ``fp32_states``:
    simple GLA's backward keeps them so) or gendistill's (:mod:`gendistill.ops.fla_hopper_dqkwg`, registered by
    :func:`fla_available`, on unless ``GENDISTILL_FLA_HOPPER_BK32=0``). KDA and GLA do not use it. None also where
    fla's kernels do not run at all (no CUDA, ``GENDISTILL_KDA_BACKEND=torch``): the pure-PyTorch backward is exact
    everywhere."""
    if os.environ.get("GENDISTILL_KDA_BACKEND", "auto") == "torch" or not fla_available() or not affected():
        return None
    try:
        import triton  # noqa: PLC0415  (GPU kernels: present wherever fla's kernels run)
        from fla.backends import TileLangBackend  # noqa: PLC0415  (GPU kernels: fla's own TileLang check)
        from fla.ops.common.backends.tilelang import CommonTileLangBackend  # noqa: PLC0415  (GPU kernels: its switch)
    except ImportError:  # another fla: it decides for itself
        return None
    if not fp32_states and TileLangBackend.is_available() and CommonTileLangBackend().is_enabled():
        return None
    if registered():
        try:
            key_block()
        except ValueError as e:  # the backend would raise at the first backward: say so before anything trains
            return str(e)
        return None
    ours = ("switched off here: unset GENDISTILL_FLA_HOPPER_BK32=0" if not enabled()
            else "which FLA_DISABLE_BACKEND_DISPATCH=1 keeps out of fla's dispatch here")
    return (f"fla refuses its gated chunk_bwd_dqkwg backward on a Hopper GPU with Triton {triton.__version__} "
            "(wrong results under Triton >= 3.4.0 and < 3.7.1, fla issue #640) unless Triton >= 3.7.1 or tilelang "
            f"(with nvcc) is installed, or gendistill's block-width backend takes it ({ours}; its gradients checked "
            "on an H100 in bf16 and fp32, docs/mixers.md)")


#: fla's switch of its intra-card context-parallel backend (``fla.ops.common.backends.intracard``); fla reads it at
#: every dispatched call
FLA_INTRACARD_ENV = "FLA_INTRACARD_CP"


@contextlib.contextmanager
def fla_intracard(enabled: bool = True) -> Iterator[None]:
    """fla's intra-card context parallelism on (or off) for the block: a long prefill's chunked delta-rule state pass
    split across the card instead of walked one chunk after another.

    fla 0.6 (``fla/ops/common/intracard_cp.py``) runs the intra-chunk work of a packed call once, as the serial
    kernel does, and splits only the chunk-to-chunk state pass: it cuts each sequence of at least three subsequence
    lengths at chunk boundaries, summarises every subsequence as an affine map of its start state (a pre-scan whose
    state pass carries ``K`` more columns than the values' ``V``: ``[K, V + K]`` per head, float32), chains the maps
    in float32 (three-pass tf32 products) and runs the subsequences' state passes side by side from their true start
    states. The same function as the serial pass up to the chain's rounding. The subsequence length is
    ``max(T / max(4, S // (2 H)), 8192)`` tokens for the longest sequence ``T`` of the call, ``H`` heads and a card
    of ``S`` multiprocessors (at most 32 pieces a sequence), so no sequence under 24K tokens is split, and at 16
    heads on an H100 or H200 (132 multiprocessors) a sequence is cut into 3 pieces under 32K tokens, 4 from there.

    fla takes the split only under ``torch.inference_mode()``, for packed calls (``cu_seqlens``) and outside fla's
    own graph mode. fla reads its switch, the environment variable ``FLA_INTRACARD_CP``, at every call; this sets it
    for the block and restores what was there after, so it is process-wide while the block runs (not for concurrent
    threads). Measured against the serial pass by ``benchmarks/kda_kernels.py`` (slower on an H100; docs/bench.md);
    gendistill's own calls never switch it on, and run with it off where fla 0.6.0 would split wrongly
    (:func:`fla_split_guard`).
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


def fla_splits_prefills() -> bool:
    """Whether fla would split a long prefill now: its switch on (as fla reads it) and inference mode."""
    return os.environ.get(FLA_INTRACARD_ENV, "0") != "0" and torch.is_inference_mode_enabled()


def fla_split_guard(cu_seqlens: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """The block of one fla call with the bounds ``cu_seqlens`` ``[N + 1]`` (None: unpacked rows, which fla never
    splits): fla's intra-card split switched off for it when the call packs more than one sequence and fla would
    split now; the caller's switch otherwise.

    fla 0.6.0 computes a wrong function when it splits two or more sequences of one packed call: its pre-scan reads
    the split sequences' pieces from their bounds flattened into one list (``_precompute_intracard_indices`` in
    ``fla/ops/common/intracard_cp.py``), in which every split sequence after the first adds its start bound again,
    so from the second split sequence on each piece is summarised from the segment before it (an empty one when two
    split sequences are adjacent, the unsplit ones between them otherwise), its last piece never, and its pieces
    start from wrong states (a relative output error of 0.48 on an H100 against the serial kernel, 2026-12-05;
    ``tests/model/test_fla_split_guard.py`` pins the misread bounds on the CPU). One split sequence, beside short ones
    or alone, is split correctly (``tests/gpu/test_kda_gpu.py``). The guard is broader than the defect (two
    sequences of which one is long enough to split lose the split too), which costs nothing here: the split was
    slower than the serial pass on an H100 (docs/bench.md). The switch is process-wide: in one thread at a time."""
    if cu_seqlens is not None and cu_seqlens.numel() > 2 and fla_splits_prefills():
        return fla_intracard(False)
    return contextlib.nullcontext()


__all__ = ["FLA_INTRACARD_ENV", "fla_available", "fla_gated_backward_refused", "fla_intracard", "fla_split_guard",
           "fla_splits_prefills", "use_fla"]
