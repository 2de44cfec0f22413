"""The packed-attention function's layout work on the CPU: FlashAttention itself needs CUDA
(``tests/gpu/test_distill_gpu.py`` checks it against SDPA there), so here ``varlen_attn`` is stood in for by a causal
attention per document, and the function around it (heads to token-major, the k/v heads of grouped-query attention
repeated for an older ``varlen_attn`` without ``enable_gqa``, the output back to ``[B, T, H, D]``) is checked against
attention computed directly in float64 with each document's own causal mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gendistill.models import packed_attention
from gendistill.models.packed_attention import packed_attention_kwargs, packed_flash_attention_forward

OLD = frozenset({"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "scale", "window_size"})


def per_document_attention(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                           enable_gqa=False, is_causal=None):
    """varlen_attn's contract on ``[N, H, D]`` tokens: causal attention inside each document of ``cu_q``."""
    assert window_size == (-1, 0) or is_causal
    assert enable_gqa or k.shape[1] == q.shape[1], "k/v must have the query's heads without enable_gqa"
    assert not enable_gqa or k.shape[1] < q.shape[1], "enable_gqa is for k/v with fewer heads"
    out = torch.empty_like(q)
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        out[a:b] = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                  v[a:b].transpose(0, 1), is_causal=True, scale=scale,
                                                  enable_gqa=enable_gqa).transpose(0, 1)
    return out


def reference(q, k, v, lens, scale):
    """Attention in float64, ``q [B, H, T, D]``, ``k/v [B, H_kv, T, D]``: query head h reads k/v head h // (H/H_kv)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = torch.empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=torch.float64)
    for b, row in enumerate(lens):
        start = 0
        for n in row:
            s = slice(start, start + n)
            w = (q[b, :, s] @ k[b, :, s].transpose(-1, -2)) * scale
            w = w.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            out[b, s] = (w @ v[b, :, s]).transpose(0, 1)
            start += n
    return out


@pytest.mark.parametrize("params", [OLD, OLD | {"enable_gqa"}], ids=["repeat k/v", "enable_gqa"])
@pytest.mark.parametrize("kv_heads", [2, 6])
def test_packed_attention_equals_attention_within_each_document(monkeypatch, params, kv_heads):
    seen_kv_heads = []

    def varlen_attn(q, k, *args, **kwargs):
        seen_kv_heads.append(k.shape[1])
        return per_document_attention(q, k, *args, **kwargs)

    monkeypatch.setattr(packed_attention, "_VARLEN", (varlen_attn, params))
    lens = [[5, 7], [12], [1, 3, 8]]
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lens])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 12, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(3, kv_heads, 12, 8, generator=g, dtype=torch.float64) for _ in range(2))
    out, none = packed_flash_attention_forward(None, q, k, v, None, scaling=0.3, **packed_attention_kwargs(pos))
    assert none is None and out.shape == (3, 12, 6, 8)
    torch.testing.assert_close(out, reference(q, k, v, lens, 0.3), rtol=1e-12, atol=1e-12)
    # k/v are repeated only for a varlen_attn without grouped-query support
    assert seen_kv_heads == [kv_heads if "enable_gqa" in params else 6]
