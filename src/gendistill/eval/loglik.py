"""Log-likelihood scoring, as lm-evaluation-harness does it.

For each ``(context, continuation)`` request the context's trailing spaces move to the continuation, the whole string
is tokenised and split at the context's token count (so word-boundary tokens match lm-eval's ``_encode_pair``; how
the ids are found without encoding every whole string: :mod:`gendistill.eval.pair_encoding`), the model runs on
``context + continuation[:-1]`` (left-truncated to the model's length), and the continuation's token log-probabilities
are summed. ``is_greedy`` says whether every continuation token is the argmax.

Requests whose model inputs are identical (e.g. MMLU's one-token letters " A" … " D" after the same prompt) share one
forward pass. Batches are right-padded without an attention mask (the model is causal, so padding on the right never
reaches a real position), sorted longest first, capped by a token budget and cut where padding and each batch's fixed
cost cost least (:mod:`gendistill.eval.batching`).

Two engines compute the same numbers (``score_requests(..., engine=...)``):

* ``"reference"`` — the model's full ``[B, T, V]`` logits, then per request a log-softmax, a gather, two host syncs.
  Simple and obviously right; the check for the fast engine.
* ``"fast"`` (default) — logits only where they are scored. The base model (``get_decoder()`` / ``.model``) gives
  hidden states ``[B, T, D]``; the positions that predict a continuation token are gathered into ``[P, D]`` (one row
  per distinct position: options that share the model input — MMLU's letters — share the row), ``lm_head`` runs once
  on them, then one float32 log-softmax, one gather of the target log-probs, greedy flags by argmax comparison and
  per-request segment sums (``index_add_``), all on the device, with one host transfer per batch (read after the next
  batch is queued, so the device does not wait for the host). The split base/``lm_head`` is used only when it
  reproduces the model's own logits exactly on a probe input (models that change logits after the head — Gemma's
  soft-capping, Cohere's logit scale — fail it); otherwise the full model runs and its logits are gathered at the
  same positions. On CUDA the batch size follows the free device memory (see :func:`device_budget`). Options of one
  question share their context: identical inputs run once, and the longest-first order puts a question's options
  (similar lengths) mostly in one batch; there is no shared-prefix cache, a context is recomputed for each distinct
  input that contains it.

Multiple-choice metrics (:func:`mc_metrics`): ``acc`` ranks options by the summed log-probability, ``acc_norm`` by the
log-probability divided by the option's length in characters (lm-eval's ``acc_norm``).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from gendistill.devices import available_cuda_bytes
from gendistill.eval.batching import BatchCost, batch_cost, cut_sorted
from gendistill.eval.pair_encoding import encode_pairs, prefix_token
from gendistill.eval.progress import progress

ENGINES = ("fast", "reference")
DEFAULT_TOKEN_BUDGET = 2048
DEFAULT_MAX_BATCH = 32
MAX_DEVICE_BATCH = 256  # rows per batch on CUDA, whatever the free memory
DEVICE_MEMORY_SHARE = 0.5  # share of the free CUDA memory the fast engine plans for
FEWEST_BATCHES = BatchCost(overhead=1e15)  # a batch's fixed cost dwarfs any padding: fill batches to the budgets


@dataclass(frozen=True)
class LLResult:
    logprob: float
    is_greedy: bool
    n_tokens: int


def model_max_length(model, default: int = 2048) -> int:
    """The longest input log-likelihood scores (longer ones are left-truncated): the model's nominal length; under
    dynamic NTK RoPE (``--rope-scaling dynamic:F``, which leaves ``max_position_embeddings`` at the trained length
    and grows the base on the fly) the trained length times ``F``, as the other scalings' nominal length is, so a
    long prompt is scored whole, as generation reads it."""
    cfg = getattr(model, "config", None)
    rope = getattr(cfg, "rope_parameters", None) or {}
    factor = rope.get("factor") if isinstance(rope, dict) and rope.get("rope_type") == "dynamic" else None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return int(v * factor) if factor else v
    return default


# ------------------------------------------------------------------------------------------------ shared planning
Groups = dict[tuple[int, ...], list[tuple[int, list[int]]]]


def group_requests(tokenizer, requests: list[tuple[str, str]], max_length: int) -> Groups:
    """Model input (``context + continuation[:-1]``, left-truncated to ``max_length``) -> ``[(request index,
    continuation ids)]``; requests with identical inputs share one entry."""
    groups: Groups = {}
    for ri, (ctx_ids, cont_ids) in enumerate(encode_pairs(tokenizer, requests)):
        if len(cont_ids) > max_length:
            cont_ids = cont_ids[-max_length:]
        full = (ctx_ids + cont_ids)[-(max_length + 1) :]
        inp = tuple(full[:-1])
        groups.setdefault(inp, []).append((ri, cont_ids))
    return groups


def plan_batches(groups: Groups, token_budget: int, max_batch: int, scored_budget: int | None = None,
                 cost: BatchCost | None = None) -> list[list[tuple[int, ...]]]:
    """Inputs longest first, cut into batches of at most ``max_batch`` rows and ``token_budget`` padded tokens
    (rows × longest input); with ``scored_budget``, also at most that many scored positions (continuation tokens).
    Where to cut: the least total ``cost`` (:func:`gendistill.eval.batching.cut_sorted`); without one, as few
    batches as the budgets allow."""
    order = sorted(groups, key=len, reverse=True)
    scored = [max((len(c) for _, c in groups[inp]), default=0) for inp in order]
    cuts = cut_sorted([len(inp) for inp in order], cost or FEWEST_BATCHES, max_rows=max_batch,
                      max_tokens=token_budget, weights=scored, max_weight=scored_budget)
    return [order[i:j] for i, j in cuts]


def device_budget(model, device: torch.device) -> tuple[int, int, int] | None:
    """``(token_budget, max_batch, scored_budget)`` for the fast engine on CUDA, ``None`` elsewhere.

    Rule: plan for ``DEVICE_MEMORY_SHARE`` (half) of the free memory (:func:`gendistill.devices.available_cuda_bytes`: the
    driver's free memory and PyTorch's cached, unused blocks), split evenly between the base model's activations —
    ``16 × hidden_size`` values per input token in the model's dtype, a generous bound on one layer's live tensors
    (residual, attention projections, MLP up/gate) — and the scored logits —
    ``vocab_size × (itemsize + 8)`` bytes per scored position (the logits, their float32 copy and the log-softmax).
    Rows are capped at ``MAX_DEVICE_BATCH``. Eager attention (scores ``[B, H, T, T]`` in memory) is not accounted
    for; the flash / memory-efficient kernels used without a mask need no ``T²`` memory.
    """
    if device.type != "cuda":
        return None
    free = available_cuda_bytes(device)
    cfg = model.config
    itemsize = next(model.parameters()).element_size()
    hidden = int(getattr(cfg, "hidden_size", 4096))
    vocab = int(getattr(cfg, "vocab_size", 1 << 17))
    usable = DEVICE_MEMORY_SHARE * free / 2
    token_budget = max(DEFAULT_TOKEN_BUDGET, int(usable // (16 * hidden * itemsize)))
    scored_budget = max(64, int(usable // (vocab * (itemsize + 8))))
    return token_budget, MAX_DEVICE_BATCH, scored_budget


# ------------------------------------------------------------------------------------------------------ engines
@torch.no_grad()
def score_requests(
    model,
    tokenizer,
    requests: list[tuple[str, str]],
    *,
    token_budget: int | None = None,
    max_batch: int | None = None,
    max_length: int | None = None,
    desc: str = "loglik",
    show_progress: bool = True,
    engine: str = "fast",
    overhead_scale: float = 1.0,
) -> list[LLResult]:
    """Summed continuation log-probability, greedy flag and token count for every request (input order).

    ``engine``: ``"fast"`` (logits at scored positions only, one host transfer per batch) or ``"reference"`` (full
    logits, per-request loop); both give the same numbers up to float round-off. Batch size: an explicit
    ``token_budget`` (padded tokens per batch) / ``max_batch`` (rows) wins; left out, the fast engine on CUDA derives
    them from the free memory (:func:`device_budget`), and otherwise they are 2048 tokens and 32 rows. Within those
    budgets the batches are cut where padding and per-batch fixed costs cost least (:mod:`gendistill.eval.batching`;
    ``overhead_scale`` scales its estimate of a batch's fixed cost).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if not requests:
        return []
    max_length = max_length or model_max_length(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token(tokenizer)
    with record_function("loglik/encode"):
        groups = group_requests(tokenizer, requests, max_length)

    scored_budget = None
    auto = device_budget(model, device) if engine == "fast" else None
    if auto is not None:
        token_budget = token_budget or auto[0]
        max_batch = max_batch or auto[1]
        scored_budget = auto[2]
    with record_function("loglik/plan"):
        batches = plan_batches(groups, token_budget or DEFAULT_TOKEN_BUDGET, max_batch or DEFAULT_MAX_BATCH,
                               scored_budget, batch_cost(model, device, overhead_scale))

    bar = progress(total=len(requests), desc=desc, enabled=show_progress, unit="req")
    if engine == "reference":
        out = _score_reference(model, groups, batches, pad, device, bar)
    else:
        out = _score_fast(model, groups, batches, pad, device, bar)
    bar.close()
    return out


def _padded(batch: list[tuple[int, ...]], pad: int) -> torch.Tensor:
    """Right-padded ``[B, T]`` input ids (``T`` = the first, longest input)."""
    width = len(batch[0])
    return torch.tensor([list(inp) + [pad] * (width - len(inp)) for inp in batch], dtype=torch.long)


def _score_reference(model, groups: Groups, batches, pad: int, device, bar) -> list[LLResult]:
    out: list[LLResult | None] = [None] * sum(len(v) for v in groups.values())
    for batch in batches:
        ids = _padded(batch, pad)
        logits = model(input_ids=ids.to(device)).logits
        for b, inp in enumerate(batch):
            n = len(inp)
            for ri, cont_ids in groups[inp]:
                k = len(cont_ids)
                sl = logits[b, n - k : n].float().log_softmax(-1)
                tgt = torch.tensor(cont_ids, dtype=torch.long, device=sl.device)
                lp = sl.gather(-1, tgt[:, None]).squeeze(-1)
                greedy = bool((sl.argmax(-1) == tgt).all())
                out[ri] = LLResult(float(lp.sum()), greedy, k)
                bar.update(1)
        del logits
    return out  # type: ignore[return-value]


# The split check's verdict per model object: the check is two forward passes, as many as the whole scoring of a
# 50-example task (one or two batches, docs/results.md §9b). It depends on the model's structure, not on its weights:
# it is kept with the identity of the base model and head it checked and the train/eval mode it ran in, and made
# again when any of them changes (a replaced head, dropout switched on or off).
_SPLIT_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ScoredLogits:
    """Logits ``[P, V]`` at chosen ``(row, position)`` pairs of a batch: base model + ``lm_head`` on the gathered
    hidden states when that split reproduces the model (checked once per model object, on a probe), else the full
    model, gathered."""

    def __init__(self, model, probe_ids: torch.Tensor):
        self.model = model
        split = _head_split_of(model)
        key = None if split is None else (id(split[0]), id(split[1]), model.training)
        checked = _SPLIT_CHECKED.get(model)
        if checked is None or checked[0] != key:
            checked = _SPLIT_CHECKED[model] = (key, split is not None and _split_reproduces(model, split, probe_ids))
        self.split = split if checked[1] else None

    def __call__(self, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``ids`` ``[B, T]``; ``rows``, ``cols`` ``[P]`` -> logits ``[P, V]`` in the model's dtype."""
        if self.split is None:
            return self.model(input_ids=ids).logits[rows, cols]
        base, head = self.split
        hidden = base(input_ids=ids, use_cache=False).last_hidden_state  # [B, T, D]
        return head(hidden[rows, cols])  # [P, V]


def _split_reproduces(model, split, probe_ids: torch.Tensor) -> bool:
    """Whether ``lm_head(base(ids).last_hidden_state)`` equals ``model(ids).logits`` bitwise on ``probe_ids``
    ``[1, T]`` (same kernels on the same inputs) for ``split = (base, lm_head)`` of :func:`_head_split_of`; False when
    the base cannot be called so or the model changes its logits after the head."""
    base, head = split
    try:
        hidden = base(input_ids=probe_ids, use_cache=False).last_hidden_state
        return torch.equal(head(hidden), model(input_ids=probe_ids).logits)
    except (AttributeError, TypeError, RuntimeError):
        return False


def _head_split_of(model):
    """``(base model, lm_head)`` found by structure (``get_decoder()`` / ``.model`` and a linear output head), or
    ``None``; unchecked."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        return None
    base = None
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            base = get_decoder()
        except (AttributeError, NotImplementedError, ValueError):
            base = None
    if base is None or base is model:
        base = getattr(model, "model", None)
    if not isinstance(base, torch.nn.Module) or base is model:
        return None
    return base, head


def _score_fast(model, groups: Groups, batches, pad: int, device, bar) -> list[LLResult]:
    out: list[LLResult | None] = [None] * sum(len(v) for v in groups.values())
    probe = torch.tensor([list(batches[0][0][:16]) or [pad]], dtype=torch.long, device=device)  # [1, <=16]
    logits_at = ScoredLogits(model, probe)
    pending = None
    with torch.inference_mode():
        for batch in batches:
            with record_function("loglik/batch"):
                queued = _launch_batch(logits_at, groups, batch, pad, device)
            if pending is not None:
                with record_function("loglik/collect"):
                    _collect(pending, out, bar)
            pending = queued
        with record_function("loglik/collect"):
            _collect(pending, out, bar)
    return out  # type: ignore[return-value]


def _launch_batch(logits_at: ScoredLogits, groups: Groups, batch, pad: int, device):
    """Queue one batch on the device; returns ``(request indices, token counts, [2, R] device tensor)`` where row 0
    holds the summed log-probs and row 1 the number of non-greedy tokens of each request."""
    # Host side: integer bookkeeping only. Distinct (row, position) pairs -> P logit rows; every continuation token
    # points at its row, its target and its request's segment.
    rows, cols, slot_of = [], [], {}
    tok_slot, tok_target, tok_seg = [], [], []
    req_index, req_len = [], []
    for b, inp in enumerate(batch):
        n = len(inp)
        for ri, cont_ids in groups[inp]:
            seg = len(req_index)
            req_index.append(ri)
            req_len.append(len(cont_ids))
            for j, t in enumerate(cont_ids):
                key = (b, n - len(cont_ids) + j)  # logits at position p predict token p + 1
                if key not in slot_of:
                    slot_of[key] = len(rows)
                    rows.append(key[0])
                    cols.append(key[1])
                tok_slot.append(slot_of[key])
                tok_target.append(t)
                tok_seg.append(seg)
    ids = _padded(batch, pad).to(device, non_blocking=True)
    pos = torch.tensor([rows, cols], dtype=torch.long).to(device, non_blocking=True)  # [2, P]
    tok = torch.tensor([tok_slot, tok_target, tok_seg], dtype=torch.long).reshape(3, -1).to(device, non_blocking=True)

    logp = logits_at(ids, pos[0], pos[1]).float().log_softmax(-1)  # [P, V]
    slot, target, seg = tok[0], tok[1], tok[2]  # [N_tok] each
    tok_lp = logp[slot, target]  # [N_tok]
    missed = (logp.argmax(-1)[slot] != target).float()  # [N_tok]
    sums = torch.zeros(2, len(req_index), dtype=torch.float32, device=device)  # [2, R]
    sums[0].index_add_(0, seg, tok_lp)
    sums[1].index_add_(0, seg, missed)
    return req_index, req_len, sums


def _collect(pending, out: list, bar) -> None:
    req_index, req_len, sums = pending
    logprobs, missed = sums.tolist()  # the batch's one host transfer
    for ri, k, lp, m in zip(req_index, req_len, logprobs, missed):
        out[ri] = LLResult(lp, m == 0.0, k)
    bar.update(len(req_index))


def mc_metrics(lls: list[float], choice_texts: list[str], gold: int) -> dict:
    """``acc``/``acc_norm`` predictions for one multiple-choice example (lm-eval definitions)."""
    pred = max(range(len(lls)), key=lambda i: lls[i])
    lens = [max(1, len(c.lstrip())) for c in choice_texts]
    normed = [ll / n for ll, n in zip(lls, lens)]
    pred_norm = max(range(len(lls)), key=lambda i: normed[i])
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "acc": float(pred == gold),
        "acc_norm": float(pred_norm == gold),
        "logprobs": lls,
        # probability mass on the gold option after renormalising over the options
        "p_gold": math.exp(lls[gold] - _logsumexp(lls)),
    }


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))
