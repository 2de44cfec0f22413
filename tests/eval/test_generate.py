"""Batched, left-padded, length-sorted generation gives exactly what one-prompt-at-a-time generation gives."""

from __future__ import annotations

from gendistill.eval.generate import generate
from gendistill.eval.prompts import apply_chat

PROMPTS = [
    "What is the capital of France?",
    "Hello",
    "The capital of Italy is Rome. What is the capital of Germany? Answer in one word, please, with numbers 123.",
    "456",
    "What is the capital of Germany? Berlin is",
]


def _chat(tok):
    return [apply_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]


def test_batched_greedy_equals_batch_of_one(model_factory, tok):
    model = model_factory(tok)
    prompts = _chat(tok)
    one, _ = generate(model, tok, prompts, max_new_tokens=12, batch_size=1, show_progress=False)
    many, stats = generate(model, tok, prompts, max_new_tokens=12, batch_size=4, show_progress=False)
    assert [o.token_ids for o in one] == [o.token_ids for o in many]
    assert [o.text for o in one] == [o.text for o in many]
    assert stats.batches == 2 and stats.n_prompts == len(prompts)
    assert stats.new_tokens == sum(o.new_tokens for o in many) > 0
    assert stats.tokens_per_s > 0
    # lengths differ, so the batch really was left-padded
    assert len({o.prompt_tokens for o in many}) > 1


def test_outputs_come_back_in_input_order(tok):
    from tests.eval.conftest import llama_factory

    model = llama_factory(tok)
    prompts = _chat(tok)
    outs, _ = generate(model, tok, prompts, max_new_tokens=4, batch_size=2, show_progress=False)
    singles = [generate(model, tok, [p], max_new_tokens=4, batch_size=1, show_progress=False)[0][0] for p in prompts]
    assert [o.token_ids for o in outs] == [s.token_ids for s in singles]


def test_seeded_sampling_is_reproducible(tok):
    from tests.eval.conftest import llama_factory

    model = llama_factory(tok)
    prompts = _chat(tok)
    kw = dict(max_new_tokens=8, batch_size=2, do_sample=True, temperature=1.5, top_p=1.0, top_k=0,
              show_progress=False)
    a, _ = generate(model, tok, prompts, seed=1, **kw)
    b, _ = generate(model, tok, prompts, seed=1, **kw)
    c, _ = generate(model, tok, prompts, seed=2, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.token_ids for o in a] != [o.token_ids for o in c]


def test_stop_strings_and_limit_flag(tok):
    from tests.eval.conftest import llama_factory

    model = llama_factory(tok)
    prompts = _chat(tok)
    full, _ = generate(model, tok, prompts, max_new_tokens=6, batch_size=2, show_progress=False)
    for o in full:
        assert o.hit_limit == (o.new_tokens == 6)
    texts = [o.text for o in full if len(o.text) >= 2]
    assert texts, "the tiny model should generate some text"
    k = next(i for i, o in enumerate(full) if len(o.text) >= 2)
    stop = full[k].text[1:2]
    cut, _ = generate(model, tok, [prompts[k]], max_new_tokens=6, stop=[stop], show_progress=False)
    assert cut[0].text == full[k].text[: full[k].text.find(stop)]
    assert not cut[0].hit_limit
