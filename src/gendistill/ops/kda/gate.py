"""KDA decay gate and small activations shared by every KDA code path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


#: fla's safe range of the bounded gate's ``lower_bound`` (``chunk_kda(..., safe_gate=True)`` refuses anything else)
GATE_LOWER_BOUND_MIN, GATE_LOWER_BOUND_MAX = -5.0, 0.0


def kda_gate(f: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None = None,
             lower_bound: float | None = None) -> torch.Tensor:
    """Channel-wise log-space decay, computed in float32 (or float64), in one of two forms:

    - ``lower_bound=None``, the paper's gate: ``g = -exp(A_log[h]) * softplus(f + dt_bias)``, in ``(-inf, 0]``;
    - ``lower_bound=lb`` (in ``[-5, 0)``), fla's bounded gate (``chunk_kda(..., use_gate_in_kernel=True,
      safe_gate=True, lower_bound=lb)``): ``g = lb * sigmoid(exp(A_log[h]) * (f + dt_bias))``, in ``[lb, 0]``.
      fla applies no clamp of its own: the range is the sigmoid's (``fla/ops/kda/gate.py``,
      ``kda_gate_chunk_cumsum_vector_kernel`` and ``naive_kda_lowerbound_gate``). It is a different function from
      the paper's gate, not an approximation of it: a student needs its own distillation with it.

    Args:
        f: ``[B, T, H, K]`` raw output of the low-rank decay projection.
        A_log: ``[H]`` per-head log decay rate (the bounded gate: log of the sigmoid's input scale).
        dt_bias: ``[H * K]`` per-channel bias, or ``None``.
        lower_bound: ``None`` for the paper's gate, else the bounded gate's lower bound.

    Returns:
        ``[B, T, H, K]`` log decay (every entry <= 0) in ``float32``, or ``float64`` when ``f`` is ``float64``.
    """
    dtype = torch.float64 if f.dtype == torch.float64 else torch.float32
    H, K = f.shape[-2:]
    x = f.to(dtype)
    if dt_bias is not None:
        x = x + dt_bias.to(dtype).view(H, K)
    A = A_log.to(dtype).exp().view(H, 1)
    if lower_bound is None:
        return -A * F.softplus(x)
    return lower_bound * torch.sigmoid(A * x)


def bounded_gate_init(A_log: torch.Tensor, dt_bias: torch.Tensor, lower_bound: float,
                      max_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounded-gate parameters that start where the paper gate's parameters ``A_log``, ``dt_bias`` start.

    With ``A_log' = 0`` and ``dt_bias' = logit(g0 / lower_bound)``, where ``g0 = -exp(A_log) * softplus(dt_bias)``
    is the paper gate at ``f = 0``, the bounded gate at ``f = 0`` equals ``g0`` channel for channel, and its slope in
    ``f`` is ``g0 * (1 - g0 / lower_bound)`` against the paper gate's ``g0 * sigmoid(dt_bias) / softplus(dt_bias)``:
    both ``~ g0`` while the decay is small (for the Mamba-style init, ``|g0| <= 1.6``; with ``lower_bound=-5``
    ``g0 / lower_bound <= 0.32``). A channel whose ``g0`` lies beyond ``max_fraction * lower_bound`` (only when
    ``|lower_bound| < 3.2``) starts there instead, where the sigmoid is steepest.

    Args:
        A_log: ``[H]``, dt_bias: ``[H * K]``: the paper gate's parameters.
    Returns:
        ``(A_log' [H] zeros, dt_bias' [H * K])`` in the dtypes of the inputs.
    """
    K = dt_bias.numel() // A_log.numel()
    g0 = kda_gate(torch.zeros(1, 1, A_log.numel(), K, dtype=torch.float64, device=A_log.device), A_log,
                  dt_bias).reshape(-1)
    s = (g0 / lower_bound).clamp(max=max_fraction)
    return torch.zeros_like(A_log), torch.logit(s).to(dt_bias.dtype)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise the last dimension as fla's kernels do: ``x / sqrt(sum(x^2) + eps)``."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus^-1(x) = x + log(-expm1(-x))`` for ``x > 0``."""
    return x + torch.log(-torch.expm1(-x))


def silu_inverse_of_one() -> float:
    """The bias ``b`` with ``silu(b) = 1`` (about 1.2785), found by Newton's method: the identity output gate."""
    b = 1.0
    for _ in range(50):
        s = 1.0 / (1.0 + math.exp(-b))
        f = b * s - 1.0
        df = s + b * s * (1.0 - s)
        b -= f / df
    return b
