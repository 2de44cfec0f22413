"""Log-likelihood scoring, as lm-evaluation-harness does it.

For each ``(context, continuation)`` request the context's trailing spaces move to the continuation, the whole string
is tokenised once and split at the context's token count (so word-boundary tokens match lm-eval's ``_encode_pair``),
the model runs on ``context + continuation[:-1]`` (left-truncated to the model's length), and the continuation's
token log-probabilities are summed. ``is_greedy`` says whether every continuation token is the argmax.

Requests whose model inputs are identical (e.g. MMLU's one-token letters " A" … " D" after the same prompt) share one
forward pass. Batches are right-padded without an attention mask (the model is causal, so padding on the right never
reaches a real position), sorted longest first and capped by a token budget.

Multiple-choice metrics (:func:`mc_metrics`): ``acc`` ranks options by the summed log-probability, ``acc_norm`` by the
log-probability divided by the option's length in characters (lm-eval's ``acc_norm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gendistill.eval.progress import progress


@dataclass(frozen=True)
class LLResult:
    logprob: float
    is_greedy: bool
    n_tokens: int


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prefix_token(tokenizer) -> int:
    """Token used as context for an empty context (lm-eval: BOS if any, else EOS)."""
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if t is not None:
            return int(t)
    return 0


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation; encode the whole, cut at the context."""
    if not context:
        return [prefix_token(tokenizer)], encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    cont = whole[len(ctx) :]
    if not cont:
        # The continuation merged into the context's last token: score it encoded on its own instead.
        cont = encode(tokenizer, continuation)
    return ctx, cont


def model_max_length(model, default: int = 2048) -> int:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


@torch.no_grad()
def score_requests(
    model,
    tokenizer,
    requests: list[tuple[str, str]],
    *,
    token_budget: int = 2048,
    max_batch: int = 32,
    max_length: int | None = None,
    desc: str = "loglik",
    show_progress: bool = True,
) -> list[LLResult]:
    """Summed continuation log-probability, greedy flag and token count for every request (input order)."""
    if not requests:
        return []
    max_length = max_length or model_max_length(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token(tokenizer)

    # Build model inputs; group requests with identical inputs.
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for ri, (ctx, cont) in enumerate(requests):
        ctx_ids, cont_ids = encode_pair(tokenizer, ctx, cont)
        if len(cont_ids) > max_length:
            cont_ids = cont_ids[-max_length:]
        full = (ctx_ids + cont_ids)[-(max_length + 1) :]
        inp = tuple(full[:-1])
        groups.setdefault(inp, []).append((ri, cont_ids))
    inputs = sorted(groups, key=len, reverse=True)

    out: list[LLResult | None] = [None] * len(requests)
    batches: list[list[tuple[int, ...]]] = []
    cur: list[tuple[int, ...]] = []
    for inp in inputs:
        if cur and ((len(cur) + 1) * len(cur[0]) > token_budget or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(inp)
    if cur:
        batches.append(cur)

    bar = progress(total=len(requests), desc=desc, enabled=show_progress)
    for batch in batches:
        width = len(batch[0])
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for b, inp in enumerate(batch):
            ids[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
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
    bar.close()
    return out  # type: ignore[return-value]


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
