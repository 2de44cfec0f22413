"""Token ids of log-likelihood requests, split as lm-evaluation-harness splits them.

lm-eval's rule (``_encode_pair``) for a ``(context, continuation)`` request: the context's trailing spaces move to the
continuation, the whole string ``context + continuation`` is encoded and cut at the context's own token count (so a
word-boundary token goes to the continuation), an empty context becomes the prefix token (BOS, else EOS), and a
continuation that merged into the context's last token is encoded alone.

Encoding every whole string is most of the host's work for few-shot tasks: MMLU's four options repeat a ~700-token
five-shot context, so 500 questions are 1.45M tokens to encode for 2,000 short continuations (2.77 s on one core of
the development machine, for each model evaluated; 1.33 s with the tail rule: ``benchmarks/loglik_encoding.py``).
:func:`encode_pairs` gets the same ids from the context's encoding and a short *tail*: for a tokenizer whose ids are a concatenation over its pre-tokens (byte-level BPE with a
regex pre-tokenizer, no prefix space, no normalizer but NFC: GPT-2, Llama 3, Qwen, SmolLM), the pre-tokens of the
context before the start ``p`` of its second-to-last pre-token cannot change when text is appended (each was ended by
a character inside the context), so ``encode(context + continuation) == encode(context)[:n] + encode(context[p:] +
continuation)`` where ``n`` is the number of the context's ids before ``p``. ``n`` is read off a check, not assumed:
the context's ids must end with exactly the ids of ``context[p:]`` encoded alone; no added token may straddle ``p``,
whether inside the context or begun before ``p`` at its end and completed by a continuation; under an NFC
normalizer the context must be NFC already (the pre-token offsets are the raw string's). A context that fails (or any
other tokenizer, or a regex other than Llama 3's and Qwen's) is encoded whole, as is a context of one request.
``tests/eval/test_pair_encoding.py`` checks the fast ids against whole-string encoding on thousands of random
requests for several tokenizers.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from typing import Any

#: pre-tokenizer kinds whose splits are decided by a few characters around each boundary (a ``Split`` only with one of
#: :data:`KNOWN_SPLIT_PATTERNS`: another regex may reach further)
_LOCAL_PRE_TOKENIZERS = {"ByteLevel", "Digits", "Punctuation"}
#: the regexes of Llama 3 (digits in threes) and Qwen2/Qwen3 (digits one by one), as transformers writes them
KNOWN_SPLIT_PATTERNS = {
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
#: the tail starts at the context's second-to-last pre-token: a contraction (``'re``, ``'ll``) that the continuation
#: completes is two pre-tokens of the context (``'`` and ``r``)
_TAIL_PRE_TOKENS = 2


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
    return encode_pairs(tokenizer, [(context, continuation)])[0]


def _pre_tokenizer_is_local(spec: dict[str, Any] | None) -> bool:
    if spec is None:
        return False
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_is_local(p) for p in spec.get("pretokenizers", []))
    if kind == "ByteLevel":
        return not spec.get("add_prefix_space", False)
    if kind == "Split":
        return ((spec.get("pattern") or {}).get("Regex") in KNOWN_SPLIT_PATTERNS
                and spec.get("behavior") == "Isolated" and not spec.get("invert", False))
    return kind in _LOCAL_PRE_TOKENIZERS


def _tail_settings(spec: dict[str, Any]) -> tuple[bool, bool]:
    """``(tail encoding allowed, NFC normalizer)`` for a fast tokenizer's JSON ``spec``."""
    norm = spec.get("normalizer")
    nfc = norm is not None and norm.get("type") == "NFC"
    ok = ((norm is None or nfc) and (spec.get("model") or {}).get("type") == "BPE"
          and _pre_tokenizer_is_local(spec.get("pre_tokenizer")))
    return ok, nfc


def _tail_tokenizer(tokenizer) -> tuple[Any, bool] | None:
    """``(backend pre-tokenizer, NFC)`` when the tail rule holds for ``tokenizer``'s structure, else None (read from
    the backend's normalizer, pre-tokenizer and model: a fraction of a millisecond, not the whole serialisation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return None
    norm = backend.normalizer
    spec = {"normalizer": json.loads(norm.__getstate__()) if norm is not None else None,
            "pre_tokenizer": json.loads(backend.pre_tokenizer.__getstate__()),
            "model": {"type": type(backend.model).__name__}}
    ok, nfc = _tail_settings(spec)
    return (backend.pre_tokenizer, nfc) if ok else None


def _tail_start(pre_tokenizer, context: str, nfc: bool, added: list[str]) -> int:
    """Where ``context``'s tail starts (a character offset), or 0 when the context is to be encoded whole."""
    if nfc and unicodedata.normalize("NFC", context) != context:
        return 0  # the offsets below are those of the raw string; NFC would move them
    pieces = pre_tokenizer.pre_tokenize_str(context)
    if len(pieces) <= _TAIL_PRE_TOKENS:
        return 0
    p = pieces[-_TAIL_PRE_TOKENS][1][0]
    n = len(context)
    for s in added:  # an added token is matched before pre-tokenization: never cut through one
        lo = context.find(s, max(0, p - len(s) + 1))
        if lo != -1 and lo < p:
            return 0  # one in the context across p
        if any(n - k < p and context.endswith(s[:k]) for k in range(1, len(s))):
            return 0  # the context ends with the start of one (before p) that a continuation may complete
    return p


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], *, tail: bool = True) -> list[tuple[list[int], list[int]]]:
    """:func:`encode_pair` for many requests at once, in a few batched tokenizer calls (a fast tokenizer encodes a list
    in parallel): every distinct context once, and for each request either its context's short tail with the
    continuation (the module's tail rule, checked per context) or its whole string (every request with
    ``tail=False``: the rule as lm-eval states it, the baseline of ``benchmarks/loglik_encoding.py``). The ids equal
    those of encoding each request alone."""
    split: list[tuple[str, str]] = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if context and n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        split.append((context, continuation))
    uses = Counter(c for c, _ in split if c)
    contexts = list(uses)
    ctx_ids = dict(zip(contexts, _batch(tokenizer, contexts)))

    # context -> (tail start, how many of the context's ids its tail holds); (0, all of them): encoded whole
    start = {c: (0, len(ctx_ids[c])) for c in contexts}
    rule = _tail_tokenizer(tokenizer) if tail else None
    if rule is not None:
        pre, nfc = rule
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
        # a context of one request gains nothing: its whole string is encoded once either way
        cut = [(c, p) for c in contexts if uses[c] > 1 and (p := _tail_start(pre, c, nfc, added))]
        for (c, p), ids in zip(cut, _batch(tokenizer, [c[p:] for c, p in cut])):
            head = len(ctx_ids[c]) - len(ids)
            if head > 0 and list(ctx_ids[c][head:]) == list(ids):  # else the context does not split there
                start[c] = (p, len(ids))

    # the texts still to encode: continuations alone (empty context), tails + continuations, whole strings
    texts = list(dict.fromkeys(c[start[c][0]:] + k if c else k for c, k in split))
    ids = dict(zip(texts, _batch(tokenizer, texts)))
    out = []
    for context, continuation in split:
        if not context:
            out.append(([prefix_token(tokenizer)], list(ids[continuation])))
            continue
        ctx = list(ctx_ids[context])
        p, n_tail = start[context]
        cont = list(ids[context[p:] + continuation])[n_tail:]
        if not cont:
            # The continuation merged into the context's last token: score it encoded on its own instead.
            cont = encode(tokenizer, continuation)
        out.append((ctx, cont))
    return out


def _batch(tokenizer, texts: list[str]) -> list[list[int]]:
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else []
