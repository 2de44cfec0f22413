"""Short causal depthwise convolution (the q/k/v convs of KDA): our PyTorch form (channels-first, any device) and a
token-major entry point that uses fla's Triton ``causal_conv1d`` on CUDA (one fused pass, packed documents included)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gendistill.ops.backend import use_fla


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
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`causal_conv1d` on token-major input: training, log-likelihood and (cached) prefill.

    Args:
        x: ``[B, T, D]``.  weight: ``[D, W]``.  bias: ``[D]`` or None.  activation: None or ``"silu"``.
        cu_seqlens: ``[N + 1]`` packed-document boundaries along T (B = 1); not combined with states.
        initial_state: ``[B, D, W]`` the last W inputs before ``x`` (column ``W - 1`` the most recent: the layout of
            transformers' linear-attention cache and of fla), or None for zeros.
        output_final_state: also return the last W inputs (``[B, D, W]``, zero-filled on the left when the
            initial state and ``x`` together hold fewer), the conv state to continue from.

    Returns:
        ``(y [B, T, D], final_state or None)``. On CUDA with fla this is fla's Triton kernel (same function:
        ``tests/gpu`` checks it against the PyTorch form); elsewhere the PyTorch form through two transposes.
    """
    W = weight.shape[-1]
    if cu_seqlens is not None and (initial_state is not None or output_final_state):
        raise ValueError("causal_conv1d_btd: conv states cannot be combined with packed documents (cu_seqlens)")
    if initial_state is not None:
        if initial_state.shape != (x.shape[0], x.shape[-1], W):
            raise ValueError(f"causal_conv1d_btd: initial_state shape {tuple(initial_state.shape)} != "
                             f"{(x.shape[0], x.shape[-1], W)} ([B, D, W])")
        initial_state = initial_state.to(x.dtype).contiguous()
    if use_fla(x):
        from fla.modules.causal_conv1d import causal_conv1d as fla_causal_conv1d  # noqa: PLC0415  (CUDA only)

        w = weight.to(x.dtype)
        b = None if bias is None else bias.to(x.dtype)
        return fla_causal_conv1d(x, w, b, activation=activation, backend="triton", initial_state=initial_state,
                                 output_final_state=output_final_state,
                                 cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(torch.int32))
    xc = x.transpose(1, 2)  # [B, D, T]
    full = xc if initial_state is None else torch.cat([initial_state, xc], dim=-1)
    y = causal_conv1d(full, weight, bias, activation, out_len=x.shape[1], cu_seqlens=cu_seqlens).transpose(1, 2)
    if not output_final_state:
        return y, None
    tail = full[..., -W:]
    return y, F.pad(tail, (W - tail.shape[-1], 0)).contiguous()  # zeros before the first input
