"""FlashAttention over packed documents for training: the teacher's and the hybrid's softmax-attention layers run
PyTorch's variable-length FlashAttention (``torch.nn.attention.varlen.varlen_attn``) on the flattened documents
instead of SDPA with the block-diagonal ``[B, 1, T, T]`` mask transformers builds from restarting ``position_ids``.
Same function (causal attention within each document), a quarter of the work at 4 documents a row and no mask.

It plugs into transformers' attention dispatch: :func:`packed_flash_attention` switches the models' configs to the
attention implementation registered here (:data:`IMPLEMENTATION`) for the duration of a ``with`` block, and the
document boundaries travel with the forward call as transformers' flash-attention keyword arguments
(:func:`packed_attention_kwargs`: ``cu_seq_lens_q/k`` ``[N + 1]`` int32 over the flattened ``B * T`` tokens and
``max_length_q/k``), computed once per batch on the host, which both transformers' decoder layers and the hybrid pass
down to every attention layer (the hybrid's KDA layers read the same boundaries).

Used where it applies: CUDA, half-precision compute (bf16 autocast), a PyTorch with ``varlen_attn``
(:func:`available`). ``tests/gpu/test_distill_gpu.py`` checks it against SDPA with the packed mask, forward and
backward, and one whole training step against the SDPA step.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from gendistill.models.hybrid.modeling_hybrid import document_cu_seqlens

IMPLEMENTATION = "gendistill_packed_flash"
#: the keyword arguments :func:`packed_attention_kwargs` returns
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _find_varlen():
    """``(varlen_attn, its parameter names)``, or None on a PyTorch without it."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: PLC0415  (PyTorch >= 2.10 only)
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


#: found once at import: the forward reads a plain value, which Dynamo guards on, instead of calling a cached
#: function that imports and inspects (the forward runs inside compiled graphs: the trainer's ``compiled_blocks``)
_VARLEN = _find_varlen()


def available(device: torch.device) -> bool:
    """True when packed FlashAttention can run on ``device`` (CUDA and a PyTorch with ``varlen_attn``)."""
    return device.type == "cuda" and _VARLEN is not None


def packed_attention_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """transformers' flash-attention keyword arguments for packed rows, from ``position_ids`` ``[B, T]`` that restart
    at each document: ``cu_seq_lens_q/k`` ``[N + 1]`` (int32; every row also starts a document) and the longest
    document ``max_length_q/k``. Computed on the host (the trainer's data thread), so the forward needs no sync."""
    cu = document_cu_seqlens(position_ids)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def packed_flash_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function. ``query`` ``[B, H, T, D]``, ``key``/``value`` ``[B, H_kv, T, D]``;
    ``cu_seq_lens_q`` ``[N + 1]`` document boundaries over the flattened ``B * T`` tokens (see
    :func:`packed_attention_kwargs`). Returns ``([B, T, H, D], None)`` like transformers' SDPA function. Causal
    within each document; no padding (training batches are packed, never padded)."""
    if attention_mask is not None:
        raise ValueError(f"{IMPLEMENTATION}: packed training batches carry no padding mask")
    if dropout:
        raise ValueError(f"{IMPLEMENTATION}: attention dropout is not supported")
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"{IMPLEMENTATION}: the forward call needs the documents' boundaries "
                         "(gendistill.models.packed_attention.packed_attention_kwargs)")
    fn, params = _VARLEN
    B, H, T, D = query.shape
    Hkv = key.shape[1]
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    q = query.transpose(1, 2).reshape(B * T, H, D).to(dtype)
    # token-major [B * T, heads, D]; an older varlen_attn (no enable_gqa) gets each k/v head repeated for the query
    # heads of its group (head h reads k/v head h // (H / H_kv), as transformers' repeat_kv), in the same one copy
    rep = H // Hkv if Hkv != H and "enable_gqa" not in params else 1
    k, v = (x.transpose(1, 2)[:, :, :, None].expand(B, T, Hkv, rep, D).reshape(B * T, Hkv * rep, D).to(dtype)
            for x in (key, value))
    kw = {"enable_gqa": True} if k.shape[1] != H else {}
    kw.update({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)})
    out = fn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling, **kw)
    return out.reshape(B, T, H, D), None


def _register() -> None:
    AttentionInterface.register(IMPLEMENTATION, packed_flash_attention_forward)
    # no mask: the boundaries come as keyword arguments (the flash-attention mask function returns None unpadded)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])


@contextlib.contextmanager
def packed_flash_attention(*models: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Inside the block, ``models``' softmax-attention layers use packed FlashAttention (their configs'
    ``_attn_implementation`` is switched and restored after). A model in training mode whose attention uses
    dropout (``config.attention_dropout > 0``) keeps its own implementation: ``varlen_attn`` has no dropout, and SDPA
    finds the same document boundaries in the restarting ``position_ids`` (a model in eval mode, such as the teacher,
    applies no dropout and is switched). Yields whether any model was switched: callers
    pass :func:`packed_attention_kwargs` to every forward either way (SDPA ignores them). A no-op (yielding False)
    when ``enabled`` is False."""
    switched = [m for m in models if enabled and not (m.training and getattr(m.config, "attention_dropout", 0.0))]
    if not switched:
        yield False
        return
    _register()
    configs = [m.config for m in switched]
    saved = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = IMPLEMENTATION
        yield True
    finally:
        for c, s in zip(configs, saved):
            c._attn_implementation = s
