"""Cache memory: theoretical (config arithmetic) and measured (bytes of the tensors a cache holds).

Theoretical, per sequence:
  full-attention layer:  2 (K and V) x num_key_value_heads x head_dim x seq_len x bytes(dtype)
  KDA layer:             recurrent state heads x K x V x 4 (fp32, fla requires it)
                         + short-conv states (q, k, v channels) x conv window x bytes(dtype)   -- O(1) in seq_len
"""

from __future__ import annotations

from typing import Any

import torch

from gendistill.models.decoding import FULL, LINEAR, kv_bytes_per_token_per_layer, layer_types

__all__ = ["FULL", "LINEAR", "DTYPE_BYTES", "layer_types", "kv_bytes_per_token_per_layer", "kda_state_dims",
           "theoretical_cache_bytes", "measured_cache_bytes", "model_api_cache_bytes"]

DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


def _first(config: Any, names: tuple[str, ...], default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def kda_state_dims(config: Any) -> dict[str, int]:
    """Shapes of one KDA layer's cached state, from :class:`HybridConfig` fields: ``kda_num_heads`` (H, the state
    heads), ``kda_num_kv_heads`` (k/v projection heads, repeated to H after the conv), ``kda_head_dim`` (K = V),
    ``kda_conv_size`` (W). The conv window caches q, k and v before the repeat: ``(H + 2 H_kv) K`` channels."""
    head_dim = _first(config, ("head_dim",)) or config.hidden_size // config.num_attention_heads
    heads = int(_first(config, ("kda_num_heads",), config.num_attention_heads))
    kv_heads = int(_first(config, ("kda_num_kv_heads",), heads))
    k = int(_first(config, ("kda_head_dim",), head_dim))
    conv = int(_first(config, ("kda_conv_size",), 4))
    return dict(heads=heads, kv_heads=kv_heads, head_k=k, head_v=k, conv=conv, conv_channels=(heads + 2 * kv_heads) * k)


def theoretical_cache_bytes(config: Any, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Per-layer-type cache bytes from config arithmetic (same keys as ``HybridForCausalLM.cache_bytes``)."""
    types = layer_types(config)
    n_full = sum(t == FULL for t in types)
    n_lin = sum(t == LINEAR for t in types)
    full = n_full * kv_bytes_per_token_per_layer(config, dtype) * seq_len * batch
    lin = 0
    if n_lin:
        d = kda_state_dims(config)
        recurrent = d["heads"] * d["head_k"] * d["head_v"] * 4
        conv = d["conv_channels"] * d["conv"] * DTYPE_BYTES[dtype]
        lin = n_lin * (recurrent + conv) * batch
    return {FULL: full, LINEAR: lin, "total": full + lin}


def _tensors(obj: Any, depth: int = 0):
    if depth > 4 or obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth + 1)


def _layer_tensors(layer: Any, kv_only: bool) -> list[torch.Tensor]:
    if kv_only and getattr(layer, "keys", None) is not None:
        return [t for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor)]
    if isinstance(layer, (tuple, list, dict)):
        return list(_tensors(layer))
    attrs = getattr(layer, "__dict__", {})
    return [t for v in attrs.values() for t in _tensors(v) if t.dim() > 0]


def measured_cache_bytes(cache: Any, config: Any) -> dict:
    """Bytes of the tensors held by ``cache`` after a forward, split by the layer type of the config.

    Attention layers count their ``keys``/``values`` only (the KV part, compared exactly with the theory); other
    layers count every non-scalar tensor they hold (recurrent and conv states). Shared storages are counted once."""
    types = layer_types(config)
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cannot read cache layers from {type(cache).__name__}")
    seen: set[tuple[int, int]] = set()
    out = {FULL: 0, LINEAR: 0, "other": 0}
    for i, layer in enumerate(layers):
        kind = types[i] if i < len(types) else "other"
        kind = kind if kind in out else "other"
        for t in _layer_tensors(layer, kv_only=kind == FULL):
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key in seen:
                continue
            seen.add(key)
            out[kind] += storage.nbytes()  # what is really held, views of larger buffers included
    out["total"] = out[FULL] + out[LINEAR] + out["other"]
    if not out["other"]:
        out.pop("other")
    return out


def model_api_cache_bytes(model: Any, seq_len: int, batch: int = 1) -> dict | None:
    """The model's own account (``HybridForCausalLM.cache_bytes``), or None for models without it."""
    fn = getattr(model, "cache_bytes", None)
    if fn is None:
        return None
    res = fn(seq_len, batch=batch)
    return {k: int(v) for k, v in res.items()}
