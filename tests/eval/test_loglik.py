"""The log-likelihood scorer against a brute-force, one-request-at-a-time computation."""

from __future__ import annotations

import math

import pytest
import torch

from gendistill.eval.loglik import mc_metrics, score_requests
from gendistill.eval.pair_encoding import encode_pair

REQUESTS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Question: What is the capital of France?\nAnswer:", " Rome"),
    ("Question: What is the capital of France?\nAnswer:", " The capital of Germany is Berlin."),
    ("Question: What is the capital of France?\nAnswer: ", "Paris"),  # trailing space moves to the continuation
    ("Hello", " world! 123"),
    ("The capital of Italy is", " Rome."),
    ("The capital of Italy is", " R"),  # one-token continuations after the same context share a forward pass
    ("The capital of Italy is", " P"),
    ("", "Hello world"),  # empty context: scored after the prefix token
]


def brute_force(model, tok, ctx: str, cont: str) -> tuple[float, bool, int]:
    ctx_ids, cont_ids = encode_pair(tok, ctx, cont)
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
    total, greedy = 0.0, True
    for j, t in enumerate(cont_ids):
        pos = len(ctx_ids) + j - 1  # the logits at pos predict token pos + 1
        total += float(logp[pos, t])
        greedy &= int(logp[pos].argmax()) == t
    return total, greedy, len(cont_ids)


@pytest.mark.parametrize("token_budget", [16, 4096])
def test_scorer_matches_brute_force(model_factory, tok, token_budget):
    model = model_factory(tok)
    got = score_requests(model, tok, REQUESTS, token_budget=token_budget, show_progress=False)
    for (ctx, cont), r in zip(REQUESTS, got):
        lp, greedy, n = brute_force(model, tok, ctx, cont)
        assert r.n_tokens == n
        assert r.logprob == pytest.approx(lp, abs=1e-4), (ctx, cont)
        assert r.is_greedy == greedy


def test_encode_pair_moves_trailing_space(tok):
    a = encode_pair(tok, "Answer: ", "Paris")
    b = encode_pair(tok, "Answer:", " Paris")
    assert a == b
    ctx, cont = encode_pair(tok, "Answer:", " Paris")
    assert tok.decode(cont) == " Paris"
    assert tok.decode(ctx) == "Answer:"


def test_truncation_keeps_the_continuation(tok):
    model = tok and __import__("tests.eval.conftest", fromlist=["llama_factory"]).llama_factory(tok)
    long_ctx = "The capital of France is Paris. " * 40
    r_short = score_requests(model, tok, [(long_ctx, " Rome")], max_length=32, show_progress=False)[0]
    ctx_ids, cont_ids = encode_pair(tok, long_ctx, " Rome")
    ids = torch.tensor([(ctx_ids + cont_ids)[-33:][:-1]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
    expect = sum(float(logp[ids.shape[1] - len(cont_ids) + j, t]) for j, t in enumerate(cont_ids))
    assert r_short.logprob == pytest.approx(expect, abs=1e-4)


def test_mc_metrics_acc_and_acc_norm():
    # option 0 has the highest total log-prob; option 1 the highest per character
    m = mc_metrics([-4.0, -6.0, -9.0], [" no", " a much longer option", " maybe"], gold=1)
    assert m["pred"] == 0 and m["acc"] == 0.0
    assert m["pred_norm"] == 1 and m["acc_norm"] == 1.0
    probs = [math.exp(x) for x in (-4.0, -6.0, -9.0)]
    assert m["p_gold"] == pytest.approx(probs[1] / sum(probs))


def test_batched_encoding_equals_one_string_at_a_time(tok):
    """encode_pairs tokenises every distinct string once in one batched call; the ids must be those of lm-eval's
    one-pair-at-a-time rule (trailing context spaces move to the continuation; encode the whole, cut at the context;
    an empty context is the prefix token; a continuation merged into the context is encoded alone)."""
    from gendistill.eval.pair_encoding import encode, encode_pairs, prefix_token

    def one(ctx, cont):
        if not ctx:
            return [prefix_token(tok)], encode(tok, cont)
        n = len(ctx) - len(ctx.rstrip())
        if n:
            ctx, cont = ctx[:-n], ctx[-n:] + cont
        whole, c = encode(tok, ctx + cont), encode(tok, ctx)
        return c, (whole[len(c):] or encode(tok, cont))

    pairs = [("Question: 2+2?\nAnswer:", " 4"), ("Question: 2+2?\nAnswer:", " 5"), ("Answer: ", "Paris"),
             ("", "alone"), ("Pari", "s"), ("x  ", " y"), ("Question: 2+2?\nAnswer:", " 4")]
    assert encode_pairs(tok, pairs) == [one(c, k) for c, k in pairs]
