"""Normalisation layers of the KDA mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gendistill.ops.backend import use_fla

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
        if use_fla(x):  # (False for a non-CUDA x)
            from fla.modules.norm.fused_norm_gate import rms_norm_gated  # noqa: PLC0415  (GPU kernel: CUDA only)

            # one Triton pass, fp32 inside, the same formula (tests/gpu checks it against the PyTorch form below)
            return rms_norm_gated(x, gate.to(x.dtype), self.weight, None, activation=self.activation, eps=self.eps)
        return self.reference(x, gate)

    def reference(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The PyTorch form (any device): ``x``, ``gate`` ``[..., V]`` -> ``[..., V]`` in ``x.dtype``."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x * GATE_ACTIVATIONS[self.activation](gate.float())).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, activation={self.activation}"
