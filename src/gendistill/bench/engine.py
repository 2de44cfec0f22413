"""Prefill / decode machinery of the TTFT, decode and throughput measurements. The static cache, the decode step and
its CUDA graph live in :mod:`gendistill.models.decoding` (the evaluator's generation engine runs the same code).

Decode runs on a *static* cache (attention KV preallocated to its final length, KDA states fixed-size), for both
models: HF's DynamicCache grows by ``torch.cat`` each step, which re-copies the whole KV and would bill the teacher for
an artefact of the cache class, not of attention. The decode step is one function over static buffers (token ids,
positions, an explicit attention mask computed from the positions), so the same function runs eagerly or is captured
in a ``torch.cuda.CUDAGraph`` (``GraphStep``) — the graph path is validated against eager (``validate_graph``)."""

from __future__ import annotations

from typing import Any

import torch

from gendistill.models.decoding import (  # the decode machinery the benchmark shares with the evaluator
    DecodeState,
    GraphStep,
    cache_tensors,
    forward,
    make_state,
    make_step,
    new_dynamic_cache,
    to_static_cache,
)

__all__ = ["DecodeState", "GraphStep", "GraphedPrefill", "cache_tensors", "compare_prefills", "forward", "make_state",
           "make_step", "new_dynamic_cache", "prefill", "random_prompt", "to_static_cache", "validate_graph",
           "validate_graphed_prefill"]


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


def compare_prefills(reference: tuple[Any, torch.Tensor], other: tuple[Any, torch.Tensor],
                     tolerance: float = 1e-2) -> dict:
    """Two prefills of one prompt, each ``(cache, next token [B, 1])``: the next tokens, the cache layouts and every
    cache tensor (max absolute difference over the reference cache's largest magnitude). ``accepted`` when the layout
    matches, the relative difference is within ``tolerance`` (1e-2: bf16 rounding) and the next tokens are equal."""
    eager_t, other_t = cache_tensors(reference[0]), cache_tensors(other[0])
    diff = scale = 0.0
    if len(eager_t) == len(other_t):
        for a, b in zip(eager_t, other_t):
            if a.shape == b.shape and a.is_floating_point():
                diff = max(diff, (a.float() - b.float()).abs().max().item())
                scale = max(scale, a.float().abs().max().item())
    same_layout = len(eager_t) == len(other_t) and all(a.shape == b.shape for a, b in zip(eager_t, other_t))
    same_next = bool(torch.equal(reference[1], other[1]))
    rel = diff / scale if scale else 0.0
    return {"next_token_match": same_next, "cache_layout_match": same_layout, "cache_max_abs_diff": diff,
            "cache_rel_diff": rel,
            "accepted": same_next and same_layout and rel <= tolerance}


@torch.inference_mode()
def validate_graphed_prefill(model: Any, graphed: GraphedPrefill) -> dict:
    """Replay once and compare with an eager prefill of the same prompt (:func:`compare_prefills`)."""
    eager = prefill(model, graphed.ids)
    replayed = graphed()
    torch.cuda.synchronize()
    return compare_prefills(eager, replayed)


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
