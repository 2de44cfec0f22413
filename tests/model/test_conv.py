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


def test_token_major_conv_continues_from_its_state_in_pieces():
    """Prefill in pieces (any split, pieces shorter than W included): each piece continued from the previous piece's
    final state gives the full sequence's output, and the final state is the last W inputs."""
    from gendistill.ops.conv import causal_conv1d_btd

    x, w, b = torch.randn(2, 17, 5, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    full = loop_conv(x.transpose(1, 2), w, b).transpose(1, 2)
    for cuts in ([17], [2, 15], [1, 1, 1, 14], [9, 3, 5]):
        state, outs, start = None, [], 0
        for n in cuts:
            y, state = causal_conv1d_btd(x[:, start:start + n], w, b, initial_state=state, output_final_state=True)
            outs.append(y)
            start += n
        assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-12), cuts
        assert torch.equal(state, x[:, -4:].transpose(1, 2))


def test_token_major_conv_state_of_a_short_prompt_is_zero_filled_and_shape_is_checked():
    import pytest

    from gendistill.ops.conv import causal_conv1d_btd

    x, w = torch.randn(1, 2, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    _, state = causal_conv1d_btd(x, w, output_final_state=True)
    assert torch.equal(state[..., :2], torch.zeros(1, 3, 2, dtype=torch.float64))
    assert torch.equal(state[..., 2:], x.transpose(1, 2))
    y, none = causal_conv1d_btd(x, w)
    assert none is None and y.shape == x.shape
    with pytest.raises(ValueError, match=r"\[B, D, W\]"):
        causal_conv1d_btd(x, w, initial_state=torch.zeros(1, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="packed documents"):
        causal_conv1d_btd(x, w, cu_seqlens=torch.tensor([0, 1, 2]), output_final_state=True)
