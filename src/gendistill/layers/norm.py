"""Normalisation layers of the KDA mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GATE_ACTIVATIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}


class GatedRMSNorm(nn.Module):
    """Per-head RMSNorm of the mixer output times an activated gate: ``rmsnorm(x) * weight * act(gate)``.

    ``x``, ``gate``: ``[..., V]`` (V = head dim). Computed in float32, returned in ``x.dtype``.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, activation: str = "silu"):
        super().__init__()
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"unknown gate activation {activation!r}; choose one of {sorted(GATE_ACTIVATIONS)}")
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.activation = activation

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x * GATE_ACTIVATIONS[self.activation](gate.float())).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, activation={self.activation}"
