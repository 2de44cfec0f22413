"""KDA decay gate and small activations shared by every KDA code path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kda_gate(f: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Channel-wise log-space decay ``g = -exp(A_log[h]) * softplus(f + dt_bias)``, computed in float32 (or float64).

    Args:
        f: ``[B, T, H, K]`` raw output of the low-rank decay projection.
        A_log: ``[H]`` per-head log decay rate.
        dt_bias: ``[H * K]`` per-channel bias, or ``None``.

    Returns:
        ``[B, T, H, K]`` log decay (every entry <= 0) in ``float32``, or ``float64`` when ``f`` is ``float64``.
    """
    dtype = torch.float64 if f.dtype == torch.float64 else torch.float32
    H, K = f.shape[-2:]
    x = f.to(dtype)
    if dt_bias is not None:
        x = x + dt_bias.to(dtype).view(H, K)
    return -A_log.to(dtype).exp().view(H, 1) * F.softplus(x)


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
