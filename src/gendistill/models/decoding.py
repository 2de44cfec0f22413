"""Greedy decoding on a *static* cache, shared by the evaluator's generation engine (:mod:`gendistill.eval.generate`)
and the efficiency benchmark (:mod:`gendistill.bench.engine`).

A prefilled ``DynamicCache`` is copied into a static one (:func:`to_static_cache`, or the evaluator's decode slots,
:mod:`gendistill.models.decode_slots`: attention KV preallocated to its final length, recurrent/conv states kept as
they are), and every decode step is one function over static buffers
(:class:`DecodeState`: next token ids, positions, first real column, an ``arange``) with the attention mask computed
from those buffers by tensor ops only. No step reads a value back to the host, so the same function runs eagerly or
is captured once in a ``torch.cuda.CUDAGraph`` and replayed (:class:`GraphStep`).

Left padding: row ``b`` of a batch whose prompts were left-padded to ``W`` columns has its first real token at column
``start[b]``. The step writes column ``W + t`` for every row at step ``t`` (transformers' ``StaticLayer`` keeps one
write position for the batch) while row ``b``'s rotary position is its own token count ``pos[b]``; so the column of a
row is ``pos[b] + start[b]`` and the row attends to columns ``start[b] .. pos[b] + start[b]``. Recurrent layers (KDA
and the other linear mixers) kept padding out of their state during the prefill and need no mask afterwards.

Sliding-window attention is not supported: its dynamic cache keeps only the last ``window - 1`` keys, which a full
static layer and the step's causal mask cannot represent. :func:`sliding_window_setting` detects such a model from its
config (the layers transformers' ``DynamicCache`` makes windowed), :func:`require_full_attention` refuses it, and
every static copy refuses a windowed cache layer (:func:`static_layer_kinds`); the evaluator falls back to
``model.generate`` instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import record_function
from transformers import DynamicCache
from transformers.cache_utils import Cache, StaticLayer

from gendistill.errors import UnsupportedModelError

FULL = "full_attention"
LINEAR = "linear_attention"
RECURRENT_TYPES = ("linear_attention", "kda", "conv", "mamba")

_NO_LOGITS_TO_KEEP: set[int] = set()


def layer_types(config: Any) -> list[str]:
    """Each layer's kind, normalised to :data:`FULL`, :data:`LINEAR` or the config's own name for other kinds."""
    n = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if not types:
        return [FULL] * n
    return [LINEAR if t in (LINEAR, "kda", "linear") else FULL if "attention" in t else t for t in types]


def sliding_window_setting(config: Any) -> str | None:
    """``None`` when every attention layer's cache keeps all its keys; otherwise the config setting that makes some
    layers keep only a window, e.g. ``"use_sliding_window=True, sliding_window=8: 2 of 2 layers"``. The windowed
    layers are the ones transformers' ``DynamicCache`` makes windowed (``sliding_attention`` / ``chunked_attention``
    layer types, or, for configs without ``layer_types`` such as Mistral's, a ``sliding_window`` that is not None);
    Qwen2/Qwen3 configs have ``sliding_attention`` layers only with ``use_sliding_window=True``."""
    windowed = DynamicCache(config=config).is_sliding
    if not any(windowed):
        return None
    text = config.get_text_config(decoder=True)
    names = ("use_sliding_window", "sliding_window", "max_window_layers", "attention_chunk_size")
    parts = [f"{n}={getattr(text, n)}" for n in names if getattr(text, n, None) is not None]
    return f"{', '.join(parts) or 'layer_types'}: {sum(windowed)} of {len(windowed)} layers"


def require_full_attention(config: Any, who: str) -> None:
    """Raise :class:`~gendistill.errors.UnsupportedModelError` naming the setting when the model has sliding-window
    layers (:func:`sliding_window_setting`), which the static-cache decoder cannot run; ``who`` names the caller."""
    setting = sliding_window_setting(config)
    if setting is not None:
        raise UnsupportedModelError(
            f"{who} has sliding-window attention ({setting}), which static-cache decoding (every key kept) does not "
            f"support; disable the sliding window in its config.json or use a model without one"
        )


def forward(model: Any, input_ids: torch.Tensor, cache: Any, position_ids=None, attention_mask=None):
    """One forward that keeps only the last position's logits ``[B, 1, V]`` (a long prompt's full logits would not
    fit); models without ``logits_to_keep`` return all of them."""
    kwargs: dict[str, Any] = dict(input_ids=input_ids, cache=cache, use_cache=True)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if id(model) not in _NO_LOGITS_TO_KEEP:
        try:
            return model(**kwargs, logits_to_keep=1)
        except TypeError as exc:
            if "logits_to_keep" not in str(exc):
                raise
            _NO_LOGITS_TO_KEEP.add(id(model))
    return model(**kwargs)


def new_dynamic_cache(model: Any):
    return DynamicCache(config=model.config)


# ---------------------------------------------------------------------------------------------------- static caches
def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.dim() > 0 else obj.clone()
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_map_tensors(v, fn) for v in obj)
    return obj


def map_state_layer(layer: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A shallow copy of a non-attention cache layer (recurrent/conv states) with ``fn`` applied to its tensors."""
    new = copy.copy(layer)
    for k, v in vars(layer).items():
        if isinstance(v, (torch.Tensor, dict, list, tuple)):
            setattr(new, k, _map_tensors(v, fn))
    return new


def _copy_state_layer(layer: Any, batch: int | None) -> Any:
    """A copy of a non-attention cache layer with its tensors cloned and, when ``batch`` is given, row 0 repeated to
    ``batch`` rows."""

    def fn(t: torch.Tensor) -> torch.Tensor:
        if batch is None:
            return t.clone()
        return t[:1].repeat(batch, *([1] * (t.dim() - 1))).contiguous()

    return map_state_layer(layer, fn)


def empty_static_layer(k: torch.Tensor, v: torch.Tensor, rows: int, max_len: int, length: int) -> StaticLayer:
    """A static attention layer of ``rows`` rows and ``max_len`` zero columns, of ``k``/``v``'s heads, head
    dimensions, dtype and device (``[B, H, L, D]``), with ``length`` columns counted as written."""
    dst = StaticLayer(max_cache_len=max_len)
    dst.lazy_initialization(k[:1].expand(rows, *k.shape[1:]), v[:1].expand(rows, *v.shape[1:]))
    dst.cumulative_length.fill_(length)
    return dst


def static_layer_kinds(cache: Any, config: Any, who: str) -> Iterator[tuple[Any, bool]]:
    """Each layer of a prefilled cache and whether a static copy holds it as attention (a full-attention layer with
    keys: preallocated K/V) or as states (recurrent/conv: copied as they are). A sliding-window layer keeps only the
    last ``window - 1`` keys, which a full static layer would misplace: refused, naming ``who`` and the layer."""
    types = layer_types(config)
    for i, src in enumerate(cache.layers):
        if getattr(src, "is_sliding", False):
            raise UnsupportedModelError(
                f"{who}: layer {i} keeps a sliding window ({type(src).__name__}); static-cache decoding "
                f"supports full attention only ({sliding_window_setting(config) or 'sliding_window'})")
        yield src, types[i] == FULL and getattr(src, "keys", None) is not None


def to_static_cache(
    cache: Any, config: Any, max_len: int, batch: int | None = None, context: int | None = None, copy_kv: bool = True
):
    """Static copy of a prefilled dynamic cache, with room for ``max_len`` tokens in every attention layer.

    ``batch``: replicate row 0 to this many rows. ``context``: pretend this many tokens are cached (the throughput sweep
    builds a batch-B cache of length L from a short template prefill; attention cost does not depend on the values).
    ``copy_kv=False`` leaves the KV zeros (template use)."""
    layers = []
    for src, attention in static_layer_kinds(cache, config, "to_static_cache"):
        if attention:
            k, v = src.keys, src.values
            rows = batch or k.shape[0]
            n = k.shape[-2]
            dst = empty_static_layer(k, v, rows, max_len, context if context is not None else n)
            if copy_kv:
                dst.keys[:, :, :n].copy_(k[:1].expand(rows, *k.shape[1:]) if batch else k)
                dst.values[:, :, :n].copy_(v[:1].expand(rows, *v.shape[1:]) if batch else v)
            layers.append(dst)
        else:
            layers.append(_copy_state_layer(src, batch))
    return Cache(layers=layers)


#: A batch whose longest prompt has this many tokens or more is prefilled one row at a time, without padding or mask,
#: when every layer of the model is attention (:func:`prefill_rows`). Measured on an H100 (docs/results.md section 16,
#: ``benchmarks/long_prefill.py``, SmolLM2-135M's shape, 8 rows): at 16K tokens the left-padded batch took 2.4x as long
#: (its mask makes SDPA compute the whole square, and holds 768 MiB a row), at 4K 0.67x; 8K lies between, not measured.
#: A hybrid's recurrent layers are launch-bound one row at a time (0.19x at 4K, 0.93x at 16K): always batched.
ROW_PREFILL_TOKENS = 8192


def prefills_by_row(model: Any, prompt_len: int) -> bool:
    """Whether a batch whose longest prompt has ``prompt_len`` tokens is prefilled one row at a time
    (:func:`prefill_rows`): a long prompt (:data:`ROW_PREFILL_TOKENS`) and a model of attention layers only."""
    return prompt_len >= ROW_PREFILL_TOKENS and all(t == FULL for t in layer_types(model.config))


def prefill_rows(model: Any, rows: list[list[int]], max_len: int, device: torch.device) -> tuple[Any, torch.Tensor]:
    """Prefill each of ``rows`` (token ids) alone, without padding or mask, into one static cache of ``len(rows)`` rows
    and ``max_len`` columns: row ``b``'s K/V at columns ``[W - len_b, W)`` (``W``: the longest row), where a left-padded
    batch prefill leaves them (the padded columns are zeros here, values computed from padding there; the decode step
    masks them either way). Returns the cache and each row's greedy first new token ``[B, 1]``. Only one row's
    dynamic cache exists at a time. For models whose every layer is attention (:func:`prefills_by_row`)."""
    width = max(map(len, rows))
    static: list[StaticLayer] = []
    first = []
    for b, row in enumerate(rows):
        dynamic = new_dynamic_cache(model)
        out = forward(model, torch.tensor([row], dtype=torch.long, device=device), dynamic)
        dynamic = getattr(out, "cache", None) or dynamic
        first.append(out.logits[:, -1].argmax(-1, keepdim=True))
        if not static:
            static = [empty_static_layer(layer.keys, layer.values, len(rows), max_len, width)
                      for layer in dynamic.layers]
        for dst, layer in zip(static, dynamic.layers):
            n = layer.keys.shape[-2]
            dst.keys[b, :, width - n:width].copy_(layer.keys[0])
            dst.values[b, :, width - n:width].copy_(layer.values[0])
        del out, dynamic
    return Cache(layers=static), torch.cat(first)


def cache_tensors_of(layer: Any) -> list[torch.Tensor]:
    """Every tensor (scalars included) one cache layer holds."""
    out: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(o, depth=0):
        if depth > 4:
            return
        if isinstance(o, torch.Tensor):
            if id(o) not in seen:
                seen.add(id(o))
                out.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)

    walk(vars(layer))
    return out


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """Every tensor (scalars included) held by the cache's layers — for snapshot / restore."""
    return [t for layer in cache.layers for t in cache_tensors_of(layer)]


# ---------------------------------------------------------------------------------------------------- decode step
@dataclass
class DecodeState:
    """Static buffers of a decode loop: everything the step reads or writes lives here (graph-capturable).

    ``ids`` ``[B, 1]``: the next input token; ``pos`` ``[B, 1]``: its rotary position; ``arange`` ``[max_len]``;
    ``start`` ``[B, 1]``: each row's first real cache column (left padding; None = no padding);
    ``last_logits`` ``[B, V]``: the last step's logits."""

    cache: Any
    ids: torch.Tensor
    pos: torch.Tensor
    arange: torch.Tensor
    start: torch.Tensor | None = None
    last_logits: torch.Tensor | None = None

    def snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(t, t.clone()) for t in [*cache_tensors(self.cache), self.ids, self.pos]]

    @staticmethod
    def restore(snap: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for t, saved in snap:
            t.copy_(saved)


def make_state(cache: Any, first_token: torch.Tensor, position: int | torch.Tensor, max_len: int,
               start: torch.Tensor | None = None) -> DecodeState:
    """The state after a prefill: ``first_token`` ``[B, 1]``; ``position``: its rotary position, one int for the batch
    or ``[B]`` per row (left padding); ``start`` ``[B]``: each row's first real column (None = no padding)."""
    device = first_token.device
    b = first_token.shape[0]
    if isinstance(position, torch.Tensor):
        pos = position.reshape(b, 1).to(device=device, dtype=torch.long).clone()
    else:
        pos = torch.full((b, 1), position, dtype=torch.long, device=device)
    return DecodeState(
        cache=cache,
        ids=first_token.reshape(b, 1).clone(),
        pos=pos,
        arange=torch.arange(max_len, device=device),
        start=None if start is None else start.reshape(b, 1).to(device=device, dtype=torch.long).clone(),
    )


def _mask_value(valid: torch.Tensor, model: Any) -> torch.Tensor:
    """``valid`` ``[B, 1, 1, L]`` as the mask the model's attention takes: boolean for SDPA, additive for eager."""
    if getattr(model.config, "_attn_implementation", None) == "eager":
        dtype = next(model.parameters()).dtype
        zero = torch.zeros((), dtype=dtype, device=valid.device)
        return torch.where(valid, zero, torch.finfo(dtype).min)
    return valid


def make_step(model: Any, state: DecodeState, explicit_mask: bool = True, keep_logits: bool = True
              ) -> Callable[[], None]:
    """The decode step: forward one token per row, greedy next token written back into ``state.ids``, positions
    advanced. With ``explicit_mask`` the attention mask is computed from ``state.pos`` (and ``state.start``) by tensor
    ops only (no host sync), which is what makes the step graph-capturable; it is used in eager mode too so both paths
    are one code. ``keep_logits``: copy each step's logits into ``state.last_logits`` (the benchmark's validation
    reads them; generation needs only the tokens)."""
    # Models whose config lists layer types index a mask mapping by type (recurrent layers get None: their state holds
    # no padding); the others (e.g. Llama) take the 4-D mask itself.
    types = set(getattr(model.config, "layer_types", None) or ())

    def step() -> None:
        mask = None
        if explicit_mask:
            col = state.pos if state.start is None else state.pos + state.start  # [B, 1] the column written now
            valid = state.arange[None, :] <= col[:, :1]
            if state.start is not None:
                valid = valid & (state.arange[None, :] >= state.start[:, :1])
            m = _mask_value(valid[:, None, None, :], model)  # [B, 1, 1, max_len]
            mask = {t: (None if t in RECURRENT_TYPES else m) for t in types | {FULL}} if types else m
        out = forward(model, state.ids, state.cache, position_ids=state.pos, attention_mask=mask)
        logits = out.logits[:, -1]
        state.ids.copy_(logits.argmax(-1, keepdim=True))
        state.pos.add_(1)
        if not keep_logits:
            return
        if state.last_logits is None:
            state.last_logits = logits.detach().clone()
        else:
            state.last_logits.copy_(logits)

    return step


class GraphStep:
    """``step`` captured once in a CUDA graph; calling the object replays it. Capture follows the PyTorch recipe:
    warm-up on a side stream (lazy allocations, autotuning, cuBLAS workspaces), then capture. The warm-up steps are
    real steps (they advance the state); ``after_warmup_step`` is called after each (e.g. to keep its token). The
    capture itself only records."""

    def __init__(self, step: Callable[[], None], warmup: int = 2,
                 after_warmup_step: Callable[[], None] | None = None):
        # the profiler's sub-ranges split a capture's cost (docs/results.md §9b: 110-160 ms of host time on an H100)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with record_function("graph/warmup"), torch.cuda.stream(s):
            for _ in range(warmup):
                step()
                if after_warmup_step is not None:
                    after_warmup_step()
        torch.cuda.current_stream().wait_stream(s)
        with record_function("graph/sync"):
            torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with record_function("graph/record"), torch.cuda.graph(self.graph):  # (its entry empties the allocator cache)
            step()
        with record_function("graph/sync"):
            torch.cuda.synchronize()

    def __call__(self) -> None:
        self.graph.replay()


# ---------------------------------------------------------------------------------------------------- memory
def kv_bytes_per_token_per_layer(config: Any, dtype: torch.dtype) -> int:
    """K and V of one token in one attention layer: ``2 × num_key_value_heads × head_dim`` values of ``dtype``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def row_cache_bytes(model: Any, columns: int) -> tuple[int, int]:
    """One row's static cache of ``columns`` columns: ``(attention K/V bytes, recurrent state bytes)`` (the latter
    the model's own account, ``cache_bytes``; 0 for a model without recurrent layers)."""
    cfg = model.config
    dtype = next(model.parameters()).dtype
    attention = sum(t == FULL for t in layer_types(cfg)) * kv_bytes_per_token_per_layer(cfg, dtype) * columns
    recurrent = int(model.cache_bytes(1, batch=1).get("linear_attention", 0)) if hasattr(model, "cache_bytes") else 0
    return attention, recurrent


def decode_memory(model: Any, prompt_len: int, max_new_tokens: int) -> tuple[int, int]:
    """Bytes a batch needs to prefill prompts of ``prompt_len`` tokens and decode ``max_new_tokens`` on a static cache,
    as ``(fixed, per_row)``: the batch takes ``fixed + rows × per_row``.

    * attention layers: K and V ``[kv_heads, L, head_dim]`` of ``L = prompt_len + max_new_tokens`` columns a row in
      the static cache, and the prefill's dynamic cache beside it for a moment;
    * recurrent layers: the model's own account (``cache_bytes``), twice for the same reason;
    * prefill activations: about a dozen ``[prompt_len, max(hidden, intermediate)]`` tensors alive at once, and the
      fp32 logits of the last position;
    * attention layers' padding mask at prefill: a left-padded batch has no causal shortcut, so transformers builds a
      boolean ``[rows, 1, prompt_len, prompt_len]`` mask and SDPA an additive copy in the model's dtype
      (``prompt_len² × (1 + itemsize)`` per row: 768 MiB at 16K tokens in bf16; a batch of 16 such rows ran out of
      memory on an H100 beside a distillation, docs/results.md section 13).

    A batch prefilled one row at a time (:func:`prefills_by_row`) has no mask, and one row's dynamic cache and
    activations at a time: those are its fixed cost, the static cache its cost a row. Otherwise everything is per
    row. An estimate meant for choosing a batch size with room to spare, not an exact figure."""
    cfg = model.config
    dtype = next(model.parameters()).dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    n_attention = sum(t == FULL for t in layer_types(cfg))
    kv, recurrent = row_cache_bytes(model, prompt_len + max_new_tokens)
    recurrent *= 2
    width = max(cfg.hidden_size, getattr(cfg, "intermediate_size", 0) or 0)
    activations = 12 * prompt_len * width * itemsize + 4 * cfg.vocab_size
    if prefills_by_row(model, prompt_len):
        return kv + activations, kv
    mask = prompt_len * prompt_len * (1 + itemsize) if n_attention else 0
    return 0, 2 * kv + recurrent + activations + mask
