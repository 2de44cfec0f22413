"""Short causal depthwise convolution (the q/k/v convs of KDA) in PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_len: int | None = None,
    cu_seqlens: torch.LongTensor | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution, zero-padded on the left.

    Args:
        x: ``[B, D, L]`` channels-first input. It may start with cached inputs of earlier steps (decode), in which
            case ``out_len`` says how many trailing outputs are wanted.
        weight: ``[D, W]``; output ``y_t = sum_j weight[:, j] * x_{t - (W - 1) + j} + bias``.
        bias: ``[D]`` or ``None``.  activation: ``None`` or ``"silu"``.
        out_len: number of trailing positions to return (default: all ``L``).
        cu_seqlens: ``[N + 1]`` packed-sequence boundaries along L (B = 1): each sequence sees zeros before its start.

    Returns:
        ``[B, D, out_len]``.
    """
    D, W = weight.shape
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        y = torch.cat(
            [causal_conv1d(x[..., s:e], weight, bias, activation) for s, e in zip(bounds[:-1], bounds[1:])], dim=-1
        )
    else:
        y = F.conv1d(x, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                     padding=W - 1, groups=D)[..., : x.shape[-1]]
        if activation == "silu":
            y = F.silu(y)
        elif activation is not None:
            raise ValueError(f"unsupported conv activation {activation!r} (use None or 'silu')")
    return y if out_len is None else y[..., -out_len:]
