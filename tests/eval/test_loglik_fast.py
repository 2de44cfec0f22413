"""The fast log-likelihood engine against the reference engine, on fresh random requests, for a tiny Llama teacher and
the tiny hybrid student; its batching does not change its numbers; models it cannot split still work.

Tolerances. float32: both engines run the same model on the same padded batches and differ only in the shape of the
``lm_head`` matmul (``[P, D]`` rows instead of ``[B·T, D]``) and in the summation order (``index_add_`` vs ``sum``),
which can change the float32 round-off of a logit by a few ulps (≈1e-7 relative each); summed over at most a few dozen
tokens that stays below 1e-6 relative (1.5e-7 measured), so 1e-5 relative leaves room while any indexing error (wrong
position, wrong target, wrong request) moves a sum by O(1). bfloat16: the base model runs the same kernels on the same
batches in both engines, so only the rounding of the logits to bf16 may differ (a different matmul shape can round a
logit to the neighbouring bf16 value). The tiny models' logits stay below 8 in magnitude (checked), where one bf16 ulp
is 2^-5; a token's log-prob (target logit − logsumexp) then moves by at most two ulps, 2^-4 per token, which is the bf16
allowance (on CPU the engines agree to 2e-7 relative). Greedy flags must agree in both dtypes: the sharpened test models
(conftest) keep argmax margins far above bf16 rounding.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from gendistill.eval.loglik import ScoredLogits, device_budget, group_requests, plan_batches, score_requests
from gendistill.eval.pair_encoding import encode, encode_pair
from tests.eval.conftest import fake_cuda_memory, llama_factory

WORDS = ["The", "capital", "of", "France", "is", "Paris", "Italy", "Rome", "Germany", "Berlin", "Hello", "world!",
         "What", "numbers", "123", "456", "tiny", "tokenizer", "?", "a", "the", "Answer:"]
MERGING = [("Pari", "s"), ("capita", "l")]  # the continuation merges into the context's last token


def random_requests(tok, model, seed: int, n: int = 40) -> list[tuple[str, str]]:
    """Random contexts (some empty, some with a trailing space, some longer than the truncation length) with random
    continuations of 1–12 words; groups of options sharing a context; merging pairs; and greedy continuations (the
    model's own argmax tokens, decoded), so that ``is_greedy`` is sometimes true."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    reqs: list[tuple[str, str]] = []
    while len(reqs) < n:
        ctx = rng.choice(["", text(1, 6), text(5, 30), text(40, 60)]) + rng.choice(["", " "])
        if ctx.strip() == "":
            ctx = ""
        for _ in range(rng.choice([1, 1, 4])):  # one request, or four options of one question
            reqs.append((ctx, " " + text(1, rng.choice([1, 3, 12]))))
        if rng.random() < 0.3:  # single-token options after one prompt: identical model inputs
            reqs += [(ctx + " Answer:", f" {c}") for c in "ABCD"]
    reqs += MERGING
    greedy_found = 0
    for _ in range(30):  # keep greedy continuations whose text re-encodes to the same tokens
        ctx = rng.choice(["", text(2, 8), text(10, 20)])
        ctx_ids = encode_pair(tok, ctx, "x")[0]
        with torch.no_grad():
            greedy = model.generate(torch.tensor([ctx_ids]), max_new_tokens=rng.randint(1, 3), do_sample=False,
                                    pad_token_id=tok.pad_token_id)[0, len(ctx_ids):].tolist()
        cont = tok.decode(greedy)
        if encode_pair(tok, ctx, cont) == (ctx_ids, greedy):
            reqs.append((ctx, cont))
            greedy_found += 1
            if greedy_found == 3:
                break
    rng.shuffle(reqs)
    return reqs


def assert_same(fast, ref, rel: float, abs_per_token: float = 0.0):
    assert len(fast) == len(ref)
    for f, r in zip(fast, ref):
        assert f.n_tokens == r.n_tokens
        assert f.logprob == pytest.approx(r.logprob, rel=rel, abs=1e-6 + abs_per_token * r.n_tokens)
        assert f.is_greedy == r.is_greedy


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_equals_reference_fp32(model_factory, tok, seed):
    model = model_factory(tok, seed=seed)
    reqs = random_requests(tok, model, seed)
    for max_length in (None, 24):  # 24 < the longest inputs: left truncation, continuations cut too
        kw = dict(max_length=max_length, show_progress=False)
        ref = score_requests(model, tok, reqs, engine="reference", **kw)
        fast = score_requests(model, tok, reqs, engine="fast", **kw)
        assert_same(fast, ref, rel=1e-5)
        if max_length is None:
            untruncated = ref
    # the cases the requests are meant to cover really occur
    assert any(r.is_greedy for r in untruncated) and not all(r.is_greedy for r in untruncated)
    assert any(c == "" for c, _ in reqs)
    assert any(len(encode(tok, c + k)) == len(encode(tok, c)) for c, k in reqs if c)  # merging
    groups = group_requests(tok, reqs, 24)
    assert any(len(v) > 1 for v in groups.values())  # identical inputs shared
    assert any(len(inp) == 24 for inp in groups)  # truncated


def test_fast_equals_reference_bf16(model_factory, tok):
    model = model_factory(tok, seed=2).to(torch.bfloat16)
    reqs = random_requests(tok, model, seed=2)
    ref = score_requests(model, tok, reqs, engine="reference", show_progress=False)
    fast = score_requests(model, tok, reqs, engine="fast", show_progress=False)
    with torch.no_grad():  # the premise of the allowance: |logits| < 8, where a bf16 ulp is 2^-5
        assert model(input_ids=torch.randint(3, len(tok), (4, 100))).logits.abs().max() < 8
    assert_same(fast, ref, rel=1e-5, abs_per_token=2**-4)


def test_results_in_input_order_whatever_the_batching(model_factory, tok):
    model = model_factory(tok, seed=3)
    reqs = random_requests(tok, model, seed=3, n=24)
    one_by_one = score_requests(model, tok, reqs, token_budget=1, show_progress=False)
    large = score_requests(model, tok, reqs, token_budget=10**6, max_batch=256, show_progress=False)
    assert_same(large, one_by_one, rel=1e-5)
    perm = list(range(len(reqs)))
    random.Random(3).shuffle(perm)
    shuffled = score_requests(model, tok, [reqs[i] for i in perm], token_budget=64, max_batch=3,
                              show_progress=False)
    assert_same(shuffled, [large[i] for i in perm], rel=1e-5)


class LogitsOnly(torch.nn.Module):
    """A causal LM with no separable base model: only ``input_ids -> logits``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.inner(input_ids=input_ids).logits)


class ScaledLogits(torch.nn.Module):
    """A base model and an ``lm_head`` like a Llama, but the logits are changed after the head (like Gemma's
    soft-capping): the split base + head would be wrong, the fast engine must notice and use the full model."""

    def __init__(self, inner):
        super().__init__()
        self.model = inner.model
        self.lm_head = inner.lm_head
        self.config = inner.config

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, **kwargs):
        logits = self.lm_head(self.model(input_ids=input_ids).last_hidden_state)
        return SimpleNamespace(logits=30.0 * torch.tanh(logits / 30.0))


@pytest.mark.parametrize("wrapper", [LogitsOnly, ScaledLogits])
def test_models_without_an_exact_split_fall_back_to_the_full_model(tok, wrapper):
    inner = llama_factory(tok, seed=4)
    model = wrapper(inner).eval()
    assert ScoredLogits(model, torch.tensor([[5, 6, 7, 8]])).split is None
    reqs = random_requests(tok, inner, seed=4, n=16)
    ref = score_requests(model, tok, reqs, engine="reference", show_progress=False)
    fast = score_requests(model, tok, reqs, engine="fast", show_progress=False)
    assert_same(fast, ref, rel=1e-5)


@pytest.mark.parametrize("wrapper", [None, ScaledLogits])
def test_the_split_is_checked_once_per_model(tok, wrapper, monkeypatch):
    """The probe (two forward passes) runs on a model's first scoring only; later calls reuse its verdict, split or
    not, and give the same numbers; another model object is checked again."""
    import gendistill.eval.loglik as L

    checks = []
    real = L._split_reproduces
    monkeypatch.setattr(L, "_split_reproduces", lambda m, s, p: checks.append(m) or real(m, s, p))
    inner = llama_factory(tok, seed=6)
    model = inner if wrapper is None else wrapper(inner).eval()
    reqs = random_requests(tok, inner, seed=6, n=12)
    first = score_requests(model, tok, reqs, show_progress=False)
    again = score_requests(model, tok, reqs, show_progress=False)
    assert checks == [model] and again == first
    assert (ScoredLogits(model, torch.tensor([[5, 6]])).split is None) == (wrapper is not None)
    other = llama_factory(tok, seed=7)
    score_requests(other, tok, reqs[:2], show_progress=False)
    assert checks == [model, other]
    # what the verdict was made on changes: made again (train mode, i.e. dropout; a replaced output head)
    model.train()
    ScoredLogits(model, torch.tensor([[5, 6]]))
    model.eval()
    assert checks == [model, other, model]
    model.lm_head = torch.nn.Linear(inner.config.hidden_size, inner.config.vocab_size, bias=False)
    ScoredLogits(model, torch.tensor([[5, 6]]))
    assert checks == [model, other, model, model]


def test_split_is_used_for_the_teacher_and_the_student(model_factory, tok):
    model = model_factory(tok)
    assert ScoredLogits(model, torch.tensor([[5, 6, 7, 8]])).split is not None


def test_batches_respect_their_budgets(tok):
    reqs = random_requests(tok, llama_factory(tok), seed=5, n=60)
    groups = group_requests(tok, reqs, 256)
    for token_budget, max_batch, scored_budget in [(1, 32, None), (200, 4, None), (10**6, 256, 20)]:
        batches = plan_batches(groups, token_budget, max_batch, scored_budget)
        assert sorted(i for b in batches for i in b) == sorted(groups)
        lengths = [len(i) for b in batches for i in b]
        assert lengths == sorted(lengths, reverse=True)  # longest first
        for b in batches:
            assert len(b) <= max_batch
            if len(b) > 1:
                assert len(b) * len(b[0]) <= token_budget
                assert scored_budget is None or sum(max(len(c) for _, c in groups[i]) for i in b) <= scored_budget
        # without a cost model: as few batches as the budgets allow (what filling each batch greedily gives)
        greedy, rows, scored = 0, [], 0
        for inp in sorted(groups, key=len, reverse=True):
            n = max(len(c) for _, c in groups[inp])
            if rows and ((len(rows) + 1) * len(rows[0]) > token_budget or len(rows) >= max_batch
                         or (scored_budget is not None and scored + n > scored_budget)):
                greedy, rows, scored = greedy + 1, [], 0
            rows.append(inp)
            scored += n
        assert len(batches) == greedy + 1


def test_device_budget_follows_free_memory(tok, monkeypatch):
    model = llama_factory(tok)
    assert device_budget(model, torch.device("cpu")) is None
    budgets = []
    for free in (2 * 2**30, 80 * 2**30):
        fake_cuda_memory(monkeypatch, free=free, total=140 * 2**30)
        token_budget, max_batch, scored_budget = device_budget(model, torch.device("cuda"))
        assert max_batch == 256
        # activations and scored logits each planned within a quarter of the free memory
        assert token_budget * 16 * model.config.hidden_size * 4 <= free / 4
        assert scored_budget * model.config.vocab_size * (4 + 8) <= free / 4
        budgets.append((token_budget, scored_budget))
    assert budgets[1][0] > budgets[0][0] and budgets[1][1] > budgets[0][1]


def test_unknown_engine_is_refused(tok):
    with pytest.raises(ValueError, match="engine"):
        score_requests(llama_factory(tok), tok, [("a", " b")], engine="turbo", show_progress=False)
