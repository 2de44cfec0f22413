"""The short causal depthwise convolution: zero history at sequence and document starts, cached decode."""

from __future__ import annotations

import torch

from gendistill.ops.conv import causal_conv1d


def loop_conv(x, weight, bias):
    """Reference: y[:, :, t] = sum_j w[:, j] * x[:, :, t - (W-1) + j] + b, zero before the start."""
    B, D, L = x.shape
    W = weight.shape[1]
    y = torch.zeros_like(x)
    for t in range(L):
        for j in range(W):
            s = t - (W - 1) + j
            if s >= 0:
                y[:, :, t] += weight[:, j] * x[:, :, s]
        y[:, :, t] += bias
    return y


def test_matches_loop_reference():
    x, w, b = torch.randn(2, 6, 11, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    assert torch.allclose(causal_conv1d(x, w, b), loop_conv(x, w, b), atol=1e-12)


def test_documents_see_zeros_before_their_start():
    x, w, b = torch.randn(1, 3, 20, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    cu = torch.tensor([0, 2, 9, 20])
    y = causal_conv1d(x, w, b, cu_seqlens=cu)
    for a, e in [(0, 2), (2, 9), (9, 20)]:
        assert torch.allclose(y[..., a:e], loop_conv(x[..., a:e], w, b), atol=1e-12)


def test_decode_with_cached_prefix_equals_full():
    x, w, b = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    full = causal_conv1d(x, w, b)
    for t in range(4, 12):  # the cache keeps the last W inputs; the new token is appended to them
        step = causal_conv1d(x[..., t - 4: t + 1], w, b, out_len=1)
        assert torch.allclose(step[..., 0], full[..., t], atol=1e-12)


def test_packed_documents_with_silu_and_empty_and_short_documents():
    x, w, b = torch.randn(1, 3, 15, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    cu = torch.tensor([0, 1, 1, 3, 15])  # documents of 1, 0, 2 and 12 tokens
    y = causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu)
    for a, e in [(0, 1), (1, 3), (3, 15)]:
        assert torch.allclose(y[..., a:e], torch.nn.functional.silu(loop_conv(x[..., a:e], w, b)), atol=1e-12)
