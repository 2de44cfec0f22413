"""Short causal depthwise convolution (the q/k/v convs of KDA): our PyTorch form (channels-first, any device) and a
token-major entry point that uses fla's Triton ``causal_conv1d`` on CUDA (one fused pass, packed documents included)."""

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
    weight = weight.to(x.dtype)
    if cu_seqlens is not None:
        # One pass per tap, each tap masked where it would reach before the token's document start: no host sync and
        # no per-document launches, whatever the number of documents.
        L = x.shape[-1]
        idx = torch.arange(L, device=x.device)
        cu = cu_seqlens.to(device=x.device, dtype=torch.long)
        pos_in_doc = idx - cu[torch.searchsorted(cu[1:], idx, right=True)]
        y = torch.zeros_like(x)
        for j in range(W):
            back = W - 1 - j
            shifted = F.pad(x, (back, 0))[..., :L] if back else x
            y = y + weight[:, j, None] * shifted * (pos_in_doc >= back).to(x.dtype)
        if bias is not None:
            y = y + bias.to(x.dtype)[:, None]
    else:
        y = F.conv1d(x, weight.unsqueeze(1), None if bias is None else bias.to(x.dtype),
                     padding=W - 1, groups=D)[..., : x.shape[-1]]
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"unsupported conv activation {activation!r} (use None or 'silu')")
    return y if out_len is None else y[..., -out_len:]


def causal_conv1d_btd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    cu_seqlens: torch.LongTensor | None = None,
) -> torch.Tensor:
    """:func:`causal_conv1d` on token-major input, without a cache (training, log-likelihood, prefill).

    Args:
        x: ``[B, T, D]``.  weight: ``[D, W]``.  bias: ``[D]`` or None.  activation: None or ``"silu"``.
        cu_seqlens: ``[N + 1]`` packed-document boundaries along T (B = 1).

    Returns:
        ``[B, T, D]``. On CUDA with fla this is fla's Triton kernel (same function: ``tests/gpu`` checks it against
        the PyTorch form); elsewhere the PyTorch form through two transposes.
    """
    from gendistill.ops.kda import use_fla  # noqa: PLC0415  (ops.kda imports this module's sibling)

    if use_fla(x):
        from fla.modules.causal_conv1d import causal_conv1d as fla_causal_conv1d  # noqa: PLC0415

        w = weight.to(x.dtype)
        b = None if bias is None else bias.to(x.dtype)
        y, _ = fla_causal_conv1d(x, w, b, activation=activation, backend="triton",
                                 cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(torch.int32))
        return y
    return causal_conv1d(x.transpose(1, 2), weight, bias, activation, cu_seqlens=cu_seqlens).transpose(1, 2)
