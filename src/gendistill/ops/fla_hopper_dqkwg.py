"""fla's gated ``chunk_bwd_dqkwg`` on a Hopper GPU under Triton >= 3.4.0 and < 3.7.1, at a block width Triton compiles
right: the backward of Gated DeltaNet and of simple GLA (so gendistill's Mamba2) where fla 0.6.0 refuses it.

fla 0.6.0 raises in that backward on Hopper (H100, H200) with Triton in [3.4.0, 3.7.1) (fla issue #640): Triton
miscompiles the kernel's ``tl.dot(tl.trans(b_ds), b_q)`` there and ``dk`` (then ``dg``) comes out wrong. The
bisection in that issue pins the fault to one block width over the key dimension: BK = 64 fails, BK = 32 and BK = 128
are correct; autotuning's configurations do not matter. fla picks BK = min(next power of two of K, 128) on Hopper,
so BK = 64 exactly when the key head dimension is 33-64 (SmolLM2's 64). Torch 2.11 pins Triton 3.6.

:class:`HopperDqkwgBackend` is a backend in fla's own dispatch registry (``fla.backends.register('common')``, the
mechanism fla's TileLang backend uses for this same call): it takes the gated calls fla would refuse here and launches
fla's unchanged Triton kernel ``chunk_bwd_kernel_dqkwg`` with blocks of 32 where fla would choose a key block of 64
(fla's own widths for a GPU of small shared memory; the key blocks' ``dg`` partial sums added as fla's launcher adds
them), every other argument as fla's launcher passes it. fla's TileLang backend (priority 5) still comes first where
it is usable. It is registered by :func:`register_hopper_dqkwg`, which :func:`gendistill.ops.backend.fla_available`
calls. It is on by default; ``GENDISTILL_FLA_HOPPER_BK32=0`` switches it off (fla reads the switch at every call) and
fla refuses again.

**On the card.** Correctness is the GPU tests' to show: ``tests/gpu/test_mixers_gpu.py`` checks the gradients of
fla's ``chunk_gated_delta_rule`` and ``chunk_simple_gla`` (q, k, v, g, beta, the initial state) against float64
PyTorch references, and each mixer's layer gradients against the PyTorch path. On an H100 (2026-12-06,
docs/results.md sections 18 and 19), with both blocks at 32: both kernels' gradients in bf16 at T = 300 and 2048 and
in fp32 at T = 300, head dimension 64 (relative errors 0.8e-3 to 5.1e-3, tolerance 4e-2 bf16 and 1e-2 fp32; #640's
error is O(1)), Gated DeltaNet's at head dimension 128 in bf16 (fla's own widths), and Gated DeltaNet's layer
gradients against the PyTorch path; Gated DeltaNet and Mamba2 students then trained in bf16 on it to held-out KL
0.233 and 0.345 (KDA 0.219) at equal tokens. A key block of 32 beside a value block of 64 hit an illegal memory
access in bf16 there (section 18), hence both at 32.
"""

from __future__ import annotations

import os
import sys

import torch

from gendistill.ops.fla_configs import activate

#: the switch: unset or "1" lets the backend take the calls fla refuses; "0" leaves fla refusing (its own behaviour)
ENV = "GENDISTILL_FLA_HOPPER_BK32"
#: the backend's type in fla's registry; fla also switches it on with ``FLA_<TYPE>`` (``FLA_GENDISTILL_HOPPER_BK32``)
BACKEND_TYPE = "gendistill_hopper_bk32"

#: the block width Triton miscompiles (fla issue #640) and the one taken instead
BAD_BK, SAFE_BK = 64, 32
#: the key block taken instead of 64, where set: 32 (the default, with a value block of at most 32: fla's widths for a
#: GPU of small shared memory) or 128 (fla's Hopper widths at head dimension 128, the key columns past K masked off);
#: both are widths #640's bisection found right. A card that fails one in the GPU test can be given the other.
KEY_BLOCK_ENV = "GENDISTILL_FLA_HOPPER_KEY_BLOCK"


def affected() -> bool:
    """Whether fla refuses the gated ``chunk_bwd_dqkwg`` here: a Hopper GPU and Triton >= 3.4.0, < 3.7.1 (fla's own
    flags, the ones its refusal reads). False where fla is not importable or has no such flags (another version).
    It may be the process's first import of fla (a benchmark asking before any kernel runs): the shipped kernel
    configurations are activated first, or fla would autotune every kernel from scratch (once fla is loaded, nothing
    is left to decide: fla's dispatch asks this at every backward)."""
    if "fla.ops.utils.cache" not in sys.modules:  # fla reads its kernel-configuration settings at its first import
        activate()
    try:
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1  # noqa: PLC0415  (GPU kernels)
    except ImportError:
        return False
    return bool(IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1)


def enabled() -> bool:
    """Whether the backend takes the refused calls: fla's rule (``BaseBackend.is_enabled``) for a backend that is on
    by default: ``FLA_GENDISTILL_HOPPER_BK32`` set and not "0", or ``GENDISTILL_FLA_HOPPER_BK32`` unset or not "0"."""
    return os.environ.get(f"FLA_{BACKEND_TYPE.upper()}", "0") != "0" or os.environ.get(ENV, "1") != "0"


def block_widths(K: int, V: int) -> tuple[int, int]:
    """(BK, BV) for keys of head dimension K and values of V on Hopper: fla's choice (the next power of two, at least
    16, at most 128), and where that puts BK at 64, fla's own choice for a GPU of small shared memory (both at most
    32), or with ``GENDISTILL_FLA_HOPPER_KEY_BLOCK=128`` a key block of 128 beside fla's Hopper value block. BK = 32
    with fla's Hopper BV = 64 ran into an illegal memory access in bf16 on an H100 (2026-12-06)."""
    import triton  # noqa: PLC0415  (GPU kernels: present wherever fla's kernels run)

    bk = min(max(triton.next_power_of_2(K), 16), 128)
    bv = min(max(triton.next_power_of_2(V), 16), 128)
    if bk != BAD_BK:
        return bk, bv
    return (SAFE_BK, min(bv, SAFE_BK)) if key_block() == SAFE_BK else (128, bv)


def key_block() -> int:
    """The key block taken where fla would use 64: ``GENDISTILL_FLA_HOPPER_KEY_BLOCK`` (32, the default, or 128).
    Raises ValueError naming the variable for any other value (:func:`gendistill.ops.backend.fla_gated_backward_refused`
    turns that into the up-front refusal, before a run trains)."""
    chosen = os.environ.get(KEY_BLOCK_ENV, str(SAFE_BK))
    if chosen not in (str(SAFE_BK), "128"):
        raise ValueError(f"{KEY_BLOCK_ENV}={chosen!r}: the key block must be 32 or 128 (64 is the width fla issue "
                         "#640 miscompiles)")
    return int(chosen)


def chunk_bwd_dqkwg_bk32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, h: torch.Tensor,
                         dh: torch.Tensor, w: torch.Tensor | None = None, g: torch.Tensor | None = None,
                         g_gamma: torch.Tensor | None = None, dv: torch.Tensor | None = None,
                         scale: float | None = None, state_v_first: bool = False,
                         cu_seqlens: torch.LongTensor | None = None, chunk_size: int = 64,
                         chunk_indices: torch.LongTensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """fla's ``chunk_bwd_dqkwg`` launcher (fla 0.6.0, ``fla/ops/common/chunk_o.py``) with :func:`block_widths`.

    Shapes as fla's: q, k ``[B, T, H, K]``; v, do, dv ``[B, T, HV, V]``; h, dh ``[B, NT, HV, K, V]`` (``[..., V, K]``
    with ``state_v_first``); g ``[B, T, HV]`` (log-space gates, per head); w like k. Returns dq, dk ``[B, T, H, K]``,
    dw (like w, or None) and dg ``[B, T, HV]`` (float32, or None)."""
    import triton  # noqa: PLC0415  (GPU kernels)
    from fla.ops.common.chunk_o import chunk_bwd_kernel_dqkwg  # noqa: PLC0415  (GPU kernels)
    from fla.ops.utils import prepare_chunk_indices  # noqa: PLC0415  (GPU kernels)

    B, T, H, K, V, HV = *k.shape, v.shape[-1], v.shape[2]
    BT = chunk_size
    if chunk_indices is None and cu_seqlens is not None:
        chunk_indices = prepare_chunk_indices(cu_seqlens, BT)
    NT = triton.cdiv(T, BT) if cu_seqlens is None else len(chunk_indices)
    BK, BV = block_widths(K, V)
    NK = triton.cdiv(K, BK)
    dq = q.new_empty(B, T, HV, K)
    dk = k.new_empty(B, T, HV, K)
    dg = torch.empty(NK, *g.shape, dtype=torch.float32, device=g.device) if g is not None else None
    dw = torch.empty_like(w) if w is not None else None
    chunk_bwd_kernel_dqkwg[(NK * NT, B * HV)](
        q=q, k=k, v=v, g=g, g_gamma=g_gamma, h=h, do=do, dh=dh, dq=dq, dk=dk, dw=dw, dv=dv, dg=dg,
        cu_seqlens=cu_seqlens, chunk_indices=chunk_indices, scale=scale, B=B, T=T, H=H, HV=HV, K=K, V=V,
        BT=BT, BK=BK, BV=BV, STATE_V_FIRST=state_v_first,
    )
    if H != HV:  # grouped value heads: each key head's gradient is the sum over its value heads
        dq = dq.view(B, T, H, HV // H, K).sum(3)
        dk = dk.view(B, T, H, HV // H, K).sum(3)
    if dg is not None:  # the key blocks' partial sums
        dg = dg.sum(0)
    return dq, dk, dw, dg


def _backend_class() -> type:
    """The fla backend class (built on first use: fla's ``BaseBackend`` is importable only with fla)."""
    from fla.backends import BaseBackend  # noqa: PLC0415  (GPU kernels)

    class HopperDqkwgBackend(BaseBackend):
        """fla backend: the gated ``chunk_bwd_dqkwg`` calls fla refuses on this machine, at a safe block width."""

        backend_type = BACKEND_TYPE
        env_var = ENV
        default_enable = True  # checked on the card (the module's docstring); GENDISTILL_FLA_HOPPER_BK32=0: off
        priority = 6  # after fla's TileLang backend (5), which fla prefers for this call where it is usable

        @classmethod
        def is_available(cls) -> bool:
            return affected()

        def chunk_bwd_dqkwg_verifier(self, q, k, v, do, h, dh, w=None, g=None, g_gamma=None, *args, **kwargs):
            if g is None:
                return False, "ungated: fla's own kernel is not affected by #640"
            if g_gamma is not None:  # no gendistill mixer passes one; fla's own path decides (and refuses)
                return False, "g_gamma: not a call gendistill's mixers make"
            return True, None

        def chunk_bwd_dqkwg(self, *args, **kwargs):
            return chunk_bwd_dqkwg_bk32(*args, **kwargs)

    return HopperDqkwgBackend


_registered = False


def register_hopper_dqkwg() -> bool:
    """Put the backend in fla's ``common`` registry where fla would refuse the gated backward and fla dispatches at
    all (not ``FLA_DISABLE_BACKEND_DISPATCH=1``); True when it is registered. It takes calls while the switch is on
    (:func:`enabled`: by default). A second call registers again, which fla's registry does by replacing the entry of
    the same type."""
    global _registered
    if not affected() or os.environ.get("FLA_DISABLE_BACKEND_DISPATCH") == "1":
        return False
    from fla.backends import register  # noqa: PLC0415  (GPU kernels)

    register("common")(_backend_class())
    _registered = True
    return True


def registered() -> bool:
    """Whether :func:`register_hopper_dqkwg` put the backend in fla's registry in this process, and the switch still
    allows it (fla reads the switch at every call)."""
    return _registered and enabled()
