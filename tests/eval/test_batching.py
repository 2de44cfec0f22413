"""The batch planner (gendistill.eval.batching): its cut is the cheapest one, checked against brute force over every
contiguous cut and, without a weight cap, over every partition of the inputs; it respects every budget; its cost model
reads the model's shape."""

from __future__ import annotations

import random

import pytest
import torch

from gendistill.eval.batching import (
    DECODE_STEP_FLOP,
    OVERHEAD_FLOP,
    BatchCost,
    attention_width,
    batch_cost,
    cut_sorted,
    generation_cost,
    linear_flops_per_token,
)
from tests.eval.conftest import hybrid_factory, llama_factory


def _feasible(batch_widths, batch_weights, max_rows, max_tokens, max_weight):
    rows, width = len(batch_widths), max(batch_widths)
    if rows == 1:
        return True
    cap = max_rows(width) if callable(max_rows) else max_rows
    return (rows <= cap and (max_tokens is None or rows * width <= max_tokens)
            and (max_weight is None or sum(batch_weights) <= max_weight))


def _cost(cost, batches):
    return sum(cost(len(b), max(b)) for b in batches)


def _contiguous_cuts(n):
    for mask in range(2 ** (n - 1)):
        bounds = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        yield list(zip(bounds, bounds[1:]))


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1 :]]


def _case(rng):
    n = rng.randint(1, 9)
    widths = sorted((rng.choice([1, 2, 3, 5, 8, 13, 40]) for _ in range(n)), reverse=True)
    weights = [rng.randint(1, 4) for _ in range(n)]
    cost = BatchCost(overhead=rng.choice([0.0, 1.0, 10.0, 60.0, 1e6]), attention_width=rng.choice([4.0, 50.0, 1e9]))
    # rows: a number, or memory-like (fewer rows for wider inputs)
    rows = rng.choice([rng.randint(1, 5), lambda width, k=rng.randint(10, 120): max(1, k // width)])
    limits = dict(max_rows=rows, max_tokens=rng.choice([None, 20, 60]), max_weight=rng.choice([None, 5, 9]))
    return widths, weights, cost, limits


@pytest.mark.parametrize("seed", range(40))
def test_cut_is_the_cheapest_contiguous_cut(seed):
    widths, weights, cost, lim = _case(random.Random(seed))
    cuts = cut_sorted(widths, cost, weights=weights, **lim)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(widths) and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    for i, j in cuts:
        assert _feasible(widths[i:j], weights[i:j], **lim)
    best = min(_cost(cost, [widths[i:j] for i, j in c]) for c in _contiguous_cuts(len(widths))
               if all(_feasible(widths[i:j], weights[i:j], **lim) for i, j in c))
    assert _cost(cost, [widths[i:j] for i, j in cuts]) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_without_a_weight_cap_no_partition_is_cheaper(seed):
    """The contiguous search loses nothing: brute force over every set partition (n <= 7) finds no cheaper batching."""
    rng = random.Random(1000 + seed)
    widths, _, cost, lim = _case(rng)
    widths = widths[:7]
    lim["max_weight"] = None
    cuts = cut_sorted(widths, cost, **lim)
    best = min(_cost(cost, [[widths[k] for k in b] for b in part]) for part in _partitions(list(range(len(widths))))
               if all(_feasible([widths[k] for k in b], [], **lim) for b in part))
    assert _cost(cost, [widths[i:j] for i, j in cuts]) == pytest.approx(best, rel=1e-12)


def test_overhead_trades_batches_against_padding():
    widths = [3000, 2900, 1200, 1100, 1000, 300, 250, 200, 120, 100]  # skewed, like MMLU's five-shot prompts
    padded = lambda cuts: sum((j - i) * widths[i] for i, j in cuts)  # noqa: E731
    none = cut_sorted(widths, BatchCost(overhead=0.0), max_rows=256)
    huge = cut_sorted(widths, BatchCost(overhead=1e12), max_rows=256)
    mid = cut_sorted(widths, BatchCost(overhead=2000.0), max_rows=256)
    assert none == [(k, k + 1) for k in range(len(widths))]  # free batches: no padding at all
    assert huge == [(0, len(widths))]  # costly batches: one, padded to the longest
    assert len(huge) < len(mid) < len(none) and padded(none) < padded(mid) < padded(huge)
    # attention's cost grows with the width: wide rows are worth a batch of their own sooner
    assert BatchCost(overhead=100.0, attention_width=100.0).per_row(100) == 200.0
    assert cut_sorted([100, 60, 60], BatchCost(overhead=100.0), max_rows=8) == [(0, 3)]  # 400 < 420
    assert cut_sorted([100, 60, 60], BatchCost(overhead=100.0, attention_width=100.0), max_rows=8) == [(0, 1), (1, 3)]
    # equal widths cost nothing to share a batch: ties go to fewer batches
    assert cut_sorted([7, 7, 7, 7], BatchCost(overhead=0.0), max_rows=4) == [(0, 4)]


def test_budgets_bind_and_an_oversized_row_still_gets_a_batch():
    widths = [500, 90, 80, 70, 60, 50]
    cuts = cut_sorted(widths, BatchCost(overhead=1e12), max_rows=lambda w: 3 if w < 100 else 1, max_tokens=220)
    assert cuts == [(0, 1), (1, 3), (3, 6)]  # 500 > 220 alone; then rows*width <= 220, at most 3 rows
    with pytest.raises(ValueError, match="sorted"):
        cut_sorted([1, 2], BatchCost(overhead=1.0), max_rows=4)
    # a row cap that grows with the width would let the search put too many rows in a batch: refused
    with pytest.raises(ValueError, match="max_rows"):
        cut_sorted([5, 3, 2, 1], BatchCost(overhead=1.0), max_rows={5: 4, 3: 1, 2: 1, 1: 4}.get)
    with pytest.raises(ValueError, match="weights"):
        cut_sorted([5, 3], BatchCost(overhead=1.0), max_rows=4, weights=[1, -1], max_weight=3)
    with pytest.raises(ValueError, match="weights"):
        cut_sorted([5, 3], BatchCost(overhead=1.0), max_rows=4, weights=[1])
    assert cut_sorted([], BatchCost(overhead=1.0), max_rows=4) == []


def test_cost_model_reads_the_model(tok):
    teacher, student = llama_factory(tok), hybrid_factory(tok)
    cfg = teacher.config
    body = sum(p.numel() for n, p in teacher.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    assert linear_flops_per_token(teacher) == 2 * body
    n_layers = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert attention_width(teacher) == pytest.approx(2 * body / (2 * n_layers * cfg.num_attention_heads * head_dim))
    assert attention_width(student) > attention_width(teacher)  # fewer softmax-attention layers
    for dev in ("cpu", "cuda"):
        cost = batch_cost(teacher, torch.device(dev), overhead_scale=3.0)
        assert cost.overhead == pytest.approx(3.0 * OVERHEAD_FLOP[dev] / (2 * body))
        gen = generation_cost(teacher, torch.device(dev), 16, overhead_scale=3.0)
        assert gen.overhead == pytest.approx(3.0 * (OVERHEAD_FLOP[dev] + 16 * DECODE_STEP_FLOP[dev]) / (2 * body))
        assert gen.attention_width == cost.attention_width == attention_width(teacher)
    with pytest.raises(ValueError, match="overhead_scale"):
        batch_cost(teacher, torch.device("cpu"), overhead_scale=-1.0)
