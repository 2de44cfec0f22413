"""Prefill / decode machinery shared by the TTFT, decode and throughput measurements.

Decode runs on a *static* cache (attention KV preallocated to its final length, KDA states fixed-size), for both
models: HF's DynamicCache grows by ``torch.cat`` each step, which re-copies the whole KV and would bill the teacher for
an artefact of the cache class, not of attention. The decode step is one function over static buffers (token ids,
positions, an explicit attention mask computed from the positions), so the same function runs eagerly or is captured
in a ``torch.cuda.CUDAGraph`` (``GraphStep``) — the graph path is validated against eager (``validate_graph``)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, StaticLayer

from gendistill.bench.cache import FULL, layer_types

_NO_LOGITS_TO_KEEP: set[int] = set()
_RECURRENT_TYPES = ("linear_attention", "kda", "conv", "mamba")


def forward(model: Any, input_ids: torch.Tensor, cache: Any, position_ids=None, attention_mask=None):
    """One forward that keeps only the last position's logits (128K x 152K logits would not fit)."""
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


def random_prompt(vocab_size: int, length: int, batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g).to(device)


@torch.inference_mode()
def prefill(model: Any, input_ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Prefill with a fresh dynamic cache; returns (cache, first generated token [B, 1]) — i.e. the TTFT unit."""
    cache = new_dynamic_cache(model)
    out = forward(model, input_ids, cache)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return (out.cache if getattr(out, "cache", None) is not None else cache), nxt


class GraphedPrefill:
    """:func:`prefill` of one fixed prompt captured in a CUDA graph: calling the object replays the same kernels into
    the same (graph-pool) cache buffers with no Python or launch overhead — the TTFT a serving engine that graphs its
    prefill would see. Capture follows the PyTorch recipe (warm-up on a side stream so autotuning and lazy allocations
    happen outside the graph). Each replay overwrites the cache and next token held by the object.

    ``ids``: ``[B, T]`` prompt (copied into a static buffer)."""

    def __init__(self, model: Any, ids: torch.Tensor, warmup: int = 1):
        self.ids = ids.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.inference_mode():
            for _ in range(warmup):
                prefill(model, self.ids)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.cache, self.next = prefill(model, self.ids)
        torch.cuda.synchronize()

    def __call__(self) -> tuple[Any, torch.Tensor]:
        self.graph.replay()
        return self.cache, self.next


@torch.inference_mode()
def validate_graphed_prefill(model: Any, graphed: GraphedPrefill) -> dict:
    """Replay once and compare with an eager prefill of the same prompt: next token and every cache tensor (max
    absolute difference over the cache's largest magnitude)."""
    cache, nxt = prefill(model, graphed.ids)
    g_cache, g_next = graphed()
    torch.cuda.synchronize()
    eager_t, graph_t = cache_tensors(cache), cache_tensors(g_cache)
    diff = scale = 0.0
    if len(eager_t) == len(graph_t):
        for a, b in zip(eager_t, graph_t):
            if a.shape == b.shape and a.is_floating_point():
                diff = max(diff, (a.float() - b.float()).abs().max().item())
                scale = max(scale, a.float().abs().max().item())
    same_layout = len(eager_t) == len(graph_t) and all(a.shape == b.shape for a, b in zip(eager_t, graph_t))
    rel = diff / scale if scale else 0.0
    return {"next_token_match": bool(torch.equal(nxt, g_next)), "cache_layout_match": same_layout,
            "cache_max_abs_diff": diff, "cache_rel_diff": rel,
            "accepted": bool(torch.equal(nxt, g_next)) and same_layout and rel <= 1e-2}


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


def _copy_state_layer(layer: Any, batch: int | None) -> Any:
    """A copy of a non-attention cache layer (KDA recurrent/conv states) with its tensors cloned and, when ``batch``
    is given, row 0 repeated to ``batch`` rows."""
    new = copy.copy(layer)

    def fn(t: torch.Tensor) -> torch.Tensor:
        if batch is None:
            return t.clone()
        return t[:1].repeat(batch, *([1] * (t.dim() - 1))).contiguous()

    for k, v in vars(layer).items():
        if isinstance(v, (torch.Tensor, dict, list, tuple)):
            setattr(new, k, _map_tensors(v, fn))
    return new


def to_static_cache(
    cache: Any, config: Any, max_len: int, batch: int | None = None, context: int | None = None, copy_kv: bool = True
):
    """Static copy of a prefilled dynamic cache, with room for ``max_len`` tokens in every attention layer.

    ``batch``: replicate row 0 to this many rows. ``context``: pretend this many tokens are cached (the throughput sweep
    builds a batch-B cache of length L from a short template prefill; attention cost does not depend on the values).
    ``copy_kv=False`` leaves the KV zeros (template use)."""
    types = layer_types(config)
    layers = []
    for i, src in enumerate(cache.layers):
        if types[i] == FULL and getattr(src, "keys", None) is not None:
            k, v = src.keys, src.values
            rows = batch or k.shape[0]
            dst = StaticLayer(max_cache_len=max_len)
            dst.lazy_initialization(k[:1].expand(rows, *k.shape[1:]), v[:1].expand(rows, *v.shape[1:]))
            n = k.shape[-2]
            if copy_kv:
                dst.keys[:, :, :n].copy_(k[:1].expand(rows, *k.shape[1:]) if batch else k)
                dst.values[:, :, :n].copy_(v[:1].expand(rows, *v.shape[1:]) if batch else v)
            dst.cumulative_length.fill_(context if context is not None else n)
            layers.append(dst)
        else:
            layers.append(_copy_state_layer(src, batch))
    return Cache(layers=layers)


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """Every tensor (scalars included) held by the cache's layers — for snapshot / restore."""
    out, seen = [], set()

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

    for layer in cache.layers:
        walk(vars(layer))
    return out


# ---------------------------------------------------------------------------------------------------- decode step
@dataclass
class DecodeState:
    """Static buffers of a decode loop: everything the step reads or writes lives here (graph-capturable)."""

    cache: Any
    ids: torch.Tensor  # [B, 1] next input token
    pos: torch.Tensor  # [B, 1] its position
    arange: torch.Tensor  # [max_len]
    last_logits: torch.Tensor | None = None  # [B, V] of the last step

    def snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(t, t.clone()) for t in [*cache_tensors(self.cache), self.ids, self.pos]]

    @staticmethod
    def restore(snap: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for t, saved in snap:
            t.copy_(saved)


def make_state(cache: Any, first_token: torch.Tensor, position: int, max_len: int) -> DecodeState:
    device = first_token.device
    b = first_token.shape[0]
    return DecodeState(
        cache=cache,
        ids=first_token.reshape(b, 1).clone(),
        pos=torch.full((b, 1), position, dtype=torch.long, device=device),
        arange=torch.arange(max_len, device=device),
    )


def make_step(model: Any, state: DecodeState, explicit_mask: bool = True) -> Callable[[], None]:
    """The decode step: forward one token per row, greedy next token written back into ``state.ids``, positions
    advanced. With ``explicit_mask`` the attention mask is computed from ``state.pos`` by tensor ops only (no host
    sync), which is what makes the step graph-capturable; it is used in eager mode too so both paths are one code."""
    # One entry per raw layer type of the config (the models index the mapping by it); recurrent layers get None
    # (no padding in the benchmark), attention layers the causal mask over the static KV buffer.
    types = set(getattr(model.config, "layer_types", None) or ()) | {FULL}

    def step() -> None:
        mask = None
        if explicit_mask:
            m = (state.arange[None, :] <= state.pos[:, :1])[:, None, None, :]  # [B, 1, 1, max_len]
            mask = {t: (None if t in _RECURRENT_TYPES else m) for t in types}
        out = forward(model, state.ids, state.cache, position_ids=state.pos, attention_mask=mask)
        logits = out.logits[:, -1]
        state.ids.copy_(logits.argmax(-1, keepdim=True))
        state.pos.add_(1)
        if state.last_logits is None:
            state.last_logits = logits.detach().clone()
        else:
            state.last_logits.copy_(logits)

    return step


class GraphStep:
    """``step`` captured once in a CUDA graph; calling the object replays it. Capture follows the PyTorch recipe:
    warm-up on a side stream (lazy allocations, autotuning, cuBLAS workspaces), then capture."""

    def __init__(self, step: Callable[[], None], warmup: int = 2):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        torch.cuda.synchronize()

    def __call__(self) -> None:
        self.graph.replay()


@torch.inference_mode()
def validate_graph(model: Any, state: DecodeState, steps: int = 4, warmup: int = 2) -> dict:
    """Run ``steps`` teacher-forced decode steps eagerly and through a captured graph from the same cache state;
    returns max |logit difference|, argmax agreement and the graph (reusable: state is restored)."""
    step = make_step(model, state)
    snap = state.snapshot()
    forced = torch.randint(0, model.config.vocab_size, (steps, *state.ids.shape), device=state.ids.device)
    eager = []
    for i in range(steps):
        state.ids.copy_(forced[i])
        step()
        eager.append(state.last_logits.float().clone())
    DecodeState.restore(snap)
    graph = GraphStep(step, warmup=warmup)
    DecodeState.restore(snap)
    diffs, agree = [], []
    for i in range(steps):
        state.ids.copy_(forced[i])
        graph()
        g = state.last_logits.float()
        diffs.append((g - eager[i]).abs().max().item())
        agree.append(bool((g.argmax(-1) == eager[i].argmax(-1)).all().item()))
    DecodeState.restore(snap)
    scale = max(e.abs().max().item() for e in eager)
    return {"max_abs_diff": max(diffs), "logit_scale": scale, "argmax_match": all(agree), "steps": steps,
            "graph": graph}
