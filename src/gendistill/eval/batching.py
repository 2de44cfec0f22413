"""Where to cut a longest-first list of inputs into padded batches: the cut of least estimated cost.

Both evaluation engines sort their inputs longest first and pad each batch to its first (longest) row. Cutting that
list into as few batches as memory allows (the old rule) pads short rows to long ones: MMLU's five-shot prompts run
from a few hundred tokens to thousands, so a few batches of 256 rows compute mostly padding. Cutting it into
one-row batches wastes nothing but pays a batch's fixed cost (Python, kernel launches, a host transfer) per row. This
module finds the cut between the two that minimises

    cost(batch of ``rows`` inputs padded to ``width``) = overhead + rows × width × (1 + width / attention_width)

summed over the batches, in units of one token's linear-layer FLOPs (:class:`BatchCost`): ``overhead`` is a batch's
fixed cost, ``width / attention_width`` the attention's share (its FLOPs grow with the width). The planner keeps the
longest-first order and chooses only where to cut it (with sorted inputs and this cost, some optimal batching is such a
cut: moving a longer input into the batch of the longer ones never widens a batch); a dynamic programme over the cut
points finds the cheapest cut exactly — :func:`cut_sorted`, ``O(n × max rows)``, vectorised per end point.

The fixed cost is given in FLOPs (:data:`OVERHEAD_FLOP`, by device type) and turned into tokens per model
(:func:`batch_cost`), so a small model, whose tokens are cheap, gets fewer and fuller batches than a large one for the
same fixed cost. ``benchmarks/eval_speed.py --overhead-sweep`` times the fast engines at several scales of these
constants on one card (docs/results.md §9b: on an H100, scales 1 to 1e6 could not be told apart; scale 0, no fixed
cost, was 20–80× slower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gendistill.models.decoding import FULL, layer_types

# A batch's fixed cost in FLOP-equivalents, by device type: about 10 ms of host work (a transformers forward's Python,
# ~500 kernel launches, one host transfer) at ~2e14 FLOP/s of small-matrix bf16 throughput on CUDA, ~1e11 on CPU.
OVERHEAD_FLOP = {"cuda": 2e12, "cpu": 1e9}
# One decode step's fixed cost, by device type: a replayed CUDA graph launches the step at once (a quarter of an eager
# forward's host cost, a guess the lease measures); on CPU each step is an eager forward.
DECODE_STEP_FLOP = {"cuda": 5e11, "cpu": 1e9}


@dataclass(frozen=True)
class BatchCost:
    """A batch's estimated cost in units of one token's linear-layer FLOPs.

    ``overhead``: the fixed cost of one batch; ``attention_width``: the width at which one token's attention FLOPs
    equal its linear-layer FLOPs (``inf``: attention ignored)."""

    overhead: float
    attention_width: float = float("inf")

    def per_row(self, width: int | np.ndarray) -> float | np.ndarray:
        """One row padded to ``width``: ``width × (1 + width / attention_width)``."""
        return width * (1.0 + width / self.attention_width)

    def __call__(self, rows: int, width: int) -> float:
        return self.overhead + rows * float(self.per_row(width))


def linear_flops_per_token(model: torch.nn.Module) -> float:
    """``2 ×`` the parameters a token's hidden state passes through: all of them but the input embeddings (tied or
    not) and the output head (the scorer runs it on a few positions only)."""
    skip = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, get, None)
        mod = fn() if callable(fn) else None
        if isinstance(mod, torch.nn.Module):
            skip.update(id(p) for p in mod.parameters())
    seen, n = set(skip), 0
    for p in model.parameters():
        if id(p) not in seen:  # (tied parameters are one object; meta tensors all have data_ptr 0)
            seen.add(id(p))
            n += p.numel()
    return 2.0 * max(n, 1)


def attention_width(model: torch.nn.Module) -> float:
    """The width ``W`` at which a token's causal attention FLOPs (``2 × W × heads × head_dim`` per softmax-attention
    layer: scores and values, half the square under the causal mask) equal its linear-layer FLOPs; ``inf`` for a model
    without softmax attention layers."""
    cfg = model.config
    n_attention = sum(t == FULL for t in layer_types(cfg))
    heads = getattr(cfg, "num_attention_heads", 0) or 0
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads if heads else 0)
    per_width = 2.0 * n_attention * heads * head_dim
    return linear_flops_per_token(model) / per_width if per_width > 0 else float("inf")


def batch_cost(model: torch.nn.Module, device: torch.device, overhead_scale: float = 1.0) -> BatchCost:
    """The cost model of one model on one device: :data:`OVERHEAD_FLOP` (times ``overhead_scale``: 0 pads nothing,
    a large scale fills every batch to its budgets) over the model's linear FLOPs per token, and its attention
    width."""
    if not overhead_scale >= 0:
        raise ValueError(f"overhead_scale must be >= 0, got {overhead_scale}")
    flop = overhead_scale * OVERHEAD_FLOP.get(device.type, OVERHEAD_FLOP["cuda"])
    return BatchCost(overhead=flop / linear_flops_per_token(model), attention_width=attention_width(model))


def generation_cost(model: torch.nn.Module, device: torch.device, max_new_tokens: int,
                    overhead_scale: float = 1.0) -> BatchCost:
    """A generation batch's cost model: the prefill's (:func:`batch_cost`) plus, as fixed cost, the fixed cost of up to
    ``max_new_tokens`` decode steps (:data:`DECODE_STEP_FLOP` times ``overhead_scale``; short answers stop sooner).
    The decode steps' own compute is left out: it grows with the rows whatever the batching, and with the padding only
    through attention over the padded columns, which the prefill's term already charges."""
    prefill = batch_cost(model, device, overhead_scale)
    step = overhead_scale * DECODE_STEP_FLOP.get(device.type, DECODE_STEP_FLOP["cuda"])
    return BatchCost(overhead=prefill.overhead + max_new_tokens * step / linear_flops_per_token(model),
                     attention_width=prefill.attention_width)


def cut_sorted(widths: Sequence[int], cost: BatchCost, *, max_rows: int | Callable[[int], int],
               max_tokens: int | None = None, weights: Sequence[int] | None = None,
               max_weight: int | None = None) -> list[tuple[int, int]]:
    """Batches ``[(start, end), ...]`` covering ``widths`` (sorted longest first) at the least total ``cost``.

    A batch ``[i, j)`` is padded to ``widths[i]`` and must hold at most ``max_rows`` rows (an int, or a function of the
    batch's width that does not grow with the width, as memory-sized rows do not), at most ``max_tokens`` padded tokens
    and at most ``max_weight`` summed ``weights`` (non-negative); a single row is always allowed (an input longer than
    every budget still gets its batch)."""
    w = np.asarray(widths, dtype=np.float64)
    n = len(w)
    if n == 0:
        return []
    if np.any(w[1:] > w[:-1]):
        raise ValueError("widths must be sorted longest first")
    # each start's row cap; the search below needs caps that never shrink as the start moves to narrower inputs
    cap_of: dict[int, int] = {}
    for x in widths:
        if x not in cap_of:
            cap_of[x] = max(1, int(max_rows(int(x)) if callable(max_rows) else max_rows))
    caps = [cap_of[x] for x in widths]
    if any(a > b for a, b in zip(caps, caps[1:])):
        raise ValueError("max_rows must not grow with the width (narrower inputs must fit at least as many rows)")
    if weights is not None and (len(weights) != n or min(weights, default=0) < 0):
        raise ValueError("weights must be one non-negative number per width")
    wt = np.zeros(n + 1) if weights is None else np.concatenate([[0.0], np.cumsum(np.asarray(weights, float))])
    per_row = np.asarray(cost.per_row(w), dtype=np.float64)  # [n] the cost of one row padded to widths[i]

    def fits(i: int, j: int) -> bool:
        rows = j - i
        if rows == 1:
            return True
        if rows > caps[i]:
            return False
        if max_tokens is not None and rows * w[i] > max_tokens:
            return False
        return max_weight is None or wt[j] - wt[i] <= max_weight

    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    back = np.zeros(n + 1, dtype=np.int64)
    # lo: the first feasible start for end j. Every later start is feasible too (fewer rows, a cap at least as large,
    # no more tokens or weight), and a start infeasible for j stays so for j + 1, so lo never moves back.
    lo = 0
    for j in range(1, n + 1):
        while not fits(lo, j):
            lo += 1
        starts = np.arange(lo, j)
        total = best[lo:j] + cost.overhead + (j - starts) * per_row[lo:j]
        k = int(np.argmin(total))  # ties: the earliest start (the longest last batch)
        best[j], back[j] = total[k], lo + k
    cuts, j = [], n
    while j > 0:
        cuts.append((int(back[j]), j))
        j = int(back[j])
    return cuts[::-1]
