"""RULER-style long-context tasks, generated here (seeded, no download), sized with the model's own tokenizer.

Families (after RULER, Hsieh et al. 2024; templates and haystacks are this project's own):

* **needle in a haystack** (``ruler_niah_*``): needles ``One special magic {number} for {key} is: {value}.`` hidden in
  a haystack (filler ``noise``, a seeded ``essay``, or other needles); single key, multiple keys (distractors),
  multiple values for one key, multiple keys queried. Keys are ``adjective-noun`` words or 7-digit numbers or UUIDs;
  values are 7-digit numbers, UUIDs or words.
* **variable tracking** (``ruler_vt``): a chain ``VAR ABCDE = 12345.``, ``VAR FGHIJ = VAR ABCDE.`` … hidden in filler
  text; the answer is every variable that ends up holding the value.
* **common-word extraction** (``ruler_cwe``): a numbered list of words; ten occur many times, the rest twice; the answer
  is the ten.

For each context length ``L`` (``--context-lengths``) the haystack size is found by binary search so that the
chat-templated prompt plus the answer budget (``max_new_tokens``) fits in ``L`` tokens of the *first model's*
tokenizer; every model is then scored on the same examples. ``--limit`` is the number of samples per length; sample
``i`` puts its (first) gold needle at depth ``depths[i % len(depths)]`` (``--depths``, percent of the haystack:
0 = first unit, 100 = last).

Scoring is RULER's: the reply (after the answer prefix the prompt already ends with) is searched case-insensitively for
each gold string; ``string_match_all`` — the share of gold strings found — is the task's score (``acc``), and
``string_match_part`` — 1 if any is found — is reported beside it (``match_part_rate``). Under log-likelihood the gold
answer (``", "``-joined, in context order) is scored as the continuation of the same prompt: its log-probability per
token and whether greedy decoding would produce it exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from gendistill.errors import ConfigError
from gendistill.eval import haystack as H
from gendistill.eval.prompts import apply_chat
from gendistill.eval.task import SHORT_ANSWER, Example, GenScore, Task

DEFAULT_LENGTHS = (4096,)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_SAMPLES_PER_DEPTH = 4


@dataclass(frozen=True)
class LongContextSpec:
    """What the run asks of the generated tasks (``--context-lengths``, ``--depths``, ``--haystack``)."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    haystack: str | None = None  # None: each task's own; "noise", "essay" or a text file for all NIAH tasks


def parse_lengths(spec: str | None) -> tuple[int, ...]:
    """``"1k,2k,4096"`` → ``(1024, 2048, 4096)``."""
    if not spec:
        return DEFAULT_LENGTHS
    out = []
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(k?)", part)
        if not m:
            raise ConfigError(f"--context-lengths: '{part}' is not a token count (e.g. 1024 or 4k)")
        n = int(m.group(1)) * (1024 if m.group(2) else 1)
        if n < 256:
            raise ConfigError(f"--context-lengths: {n} is too short for a long-context task (at least 256 tokens)")
        out.append(n)
    if not out:
        raise ConfigError("--context-lengths: no length given")
    return tuple(sorted(set(out)))


def parse_depths(spec: str | None) -> tuple[float, ...]:
    """``"0,50,100"`` (percent) → ``(0.0, 0.5, 1.0)``."""
    if not spec:
        return DEFAULT_DEPTHS
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            d = float(part)
        except ValueError:
            raise ConfigError(f"--depths: '{part}' is not a number (percent of the haystack, 0..100)") from None
        if not 0 <= d <= 100:
            raise ConfigError(f"--depths: {d} is outside 0..100 (percent of the haystack)")
        out.append(d / 100)
    if not out:
        raise ConfigError("--depths: no depth given")
    return tuple(sorted(set(out)))


# ------------------------------------------------------------------------------------------------ scoring


def _clean(pred: str) -> str:
    return re.sub(r"[\x00-\x1f]", "\n", pred.strip()).strip()


def string_match_all(pred: str, refs: list[str]) -> float:
    """RULER: the share of gold strings contained (case-insensitively) in the prediction."""
    return len(recalled(pred, refs)) / len(refs)


def recalled(pred: str, refs: list[str]) -> list[str]:
    """The gold strings contained (case-insensitively, as :func:`string_match_all` counts them) in the prediction,
    in the order of ``refs``."""
    p = _clean(pred).lower()
    return [r for r in refs if r.lower() in p]


def string_match_part(pred: str, refs: list[str]) -> float:
    """RULER: 1 if any gold string is contained (case-insensitively) in the prediction, else 0."""
    return float(bool(recalled(pred, refs)))


# ------------------------------------------------------------------------------------------------ the task


_VALUE_NAMES = {"numbers": ("number", "numbers"), "uuids": ("uuid", "uuids"), "noun": ("word", "words")}


@dataclass
class _Sample:
    context: str
    answers: list[str]
    fields: dict[str, Any]


@dataclass
class RulerTask(Task):
    """A generated long-context task; ``family`` is ``niah``, ``vt`` or ``cwe``."""

    family: str = "niah"
    haystack_source: str = "essay"  # noise | essay | needles (a haystack of distractor needles)
    key_type: str = "words"
    value_type: str = "numbers"
    n_keys: int = 1  # needles with distinct keys (the first n_queries are asked for, the rest distract)
    n_values: int = 1  # values per queried key
    n_queries: int = 1
    generated: bool = True
    loglik_on_generation_prompt: bool = True
    breakdown: tuple[str, ...] = ("length", "depth")
    extra_rates: tuple[str, ...] = ("match_part",)

    # --------------------------------------------------------------- checks before any model is loaded
    def check(self, spec: LongContextSpec) -> None:
        if spec.haystack is not None and self.haystack_source in H.SOURCES:
            H.Haystack(spec.haystack)  # a missing/unreadable file fails here, before a model is loaded

    def load(self, source: str = "local") -> list[Example]:
        raise ConfigError(f"task {self.name}: generated with the model's tokenizer (build), not loaded from a file")

    # --------------------------------------------------------------- one sample
    def _haystack(self, spec: LongContextSpec) -> H.Haystack:
        src = self.haystack_source
        if spec.haystack is not None and src in H.SOURCES:
            src = spec.haystack
        return H.Haystack(src)

    def _sample(self, rng: random.Random, n_units: int, depth: float, hay: H.Haystack | None, seed: int) -> _Sample:
        if self.family == "niah":
            return self._niah(rng, n_units, depth, hay, seed)
        if self.family == "vt":
            return self._vt(rng, n_units, depth, seed)
        if self.family == "cwe":
            return self._cwe(rng, n_units)
        raise ConfigError(f"task {self.name}: unknown family {self.family}")

    def _niah(self, rng, n_units, depth, hay, seed) -> _Sample:
        vname, vnames = _VALUE_NAMES[self.value_type]
        keys = H.distinct(H.MAKERS[self.key_type], rng, self.n_keys)
        values = {k: H.distinct(H.MAKERS[self.value_type], rng, self.n_values if i < self.n_queries else 1)
                  for i, k in enumerate(keys)}
        needle = "One special magic {} for {} is: {}."
        if self.haystack_source == "needles":
            units = []
            while len(units) < n_units:
                k = H.MAKERS[self.key_type](rng)
                if any(k in q or q in k for q in keys):
                    continue
                units.append(needle.format(vname, k, H.MAKERS[self.value_type](rng)))
            sep = "\n"
        else:
            units = hay.take(n_units, seed)
            sep = " "
        placed = [(k, v) for k in keys for v in values[k]]
        # the first gold needle at the requested depth, every other one at a random place
        positions = [round(depth * n_units)] + [rng.randrange(n_units + 1) for _ in placed[1:]]
        for (k, v), pos in sorted(zip(placed, positions), key=lambda kp: -kp[1]):
            units.insert(pos, needle.format(vname, k, v))
        context = sep.join(units).replace(" \n\n", "\n\n")
        queried = keys[: self.n_queries]
        # gold strings in the order they appear in the context
        answers = sorted((v for k in queried for v in values[k]), key=lambda v: context.index(v))
        multi = len(answers) > 1
        query = ", ".join(queried[:-1]) + f" and {queried[-1]}" if len(queried) > 1 else queried[0]
        return _Sample(context, answers, {
            "vname": vnames if multi else vname, "query": query,
            "question": (f"What are all the special magic {vnames} for {query} mentioned in the text above?" if multi
                         else f"What is the special magic {vname} for {query} mentioned in the text above?"),
            "intro": f"A few special magic {vnames} are hidden in the text below. Read it carefully and remember "
                     f"them: you will be asked about them afterwards.",
            "prefix": (f"The special magic {vnames} for {query} mentioned in the text above are" if multi
                       else f"The special magic {vname} for {query} mentioned in the text above is"),
        })

    def _vt(self, rng, n_units, depth, seed) -> _Sample:
        names = H.distinct(H.variable_name, rng, 1 + self.n_values)
        value = str(rng.randrange(10_000, 100_000))
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        units = H.noise_sentences(n_units)
        first = round(depth * n_units)
        later = sorted(rng.randrange(first, n_units + 1) for _ in statements[1:])
        # insert from the back (the later statement first where two share a place), so the chain stays in order
        for j, pos in sorted(enumerate([first, *later]), key=lambda jp: (-jp[1], -jp[0])):
            units.insert(pos, statements[j])
        context = " ".join(units)
        n = len(names)
        return _Sample(context, names, {
            "question": f"Which variables are assigned the value {value} in the text above, directly or through "
                        f"other variables? List all of them.",
            "intro": "Track the chain of variable assignments hidden in the text below.",
            "prefix": f"Answer: following the assignments in the text above, {n} variables are assigned the value "
                      f"{value}. They are:",
            "value": value,
        })

    def _cwe(self, rng, n_units) -> _Sample:
        """``n_units`` uncommon words, each twice; ten common words, each 5 to 30 times (more in longer lists)."""
        vocab = H.compound_words(rng, 10 + n_units)
        common, rare = vocab[:10], vocab[10:]
        freq_common = max(5, min(30, len(rare) // 10 + 3))
        words = common * freq_common + rare * 2
        rng.shuffle(words)
        context = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(words))
        answers = sorted(common, key=lambda w: context.index(f". {w}\n") if f". {w}\n" in context else len(context))
        return _Sample(context, answers, {
            "question": "Which 10 words occur most often in the list above?",
            "intro": "Below is a numbered list of words. Some of them occur many times.",
            "prefix": "Answer: the 10 words that occur most often in the list are:",
        })

    # --------------------------------------------------------------- prompt and size
    def _example(self, s: _Sample, ex_id: str, length: int, depth: float | None) -> Example:
        fields = {**s.fields, "context": s.context, "answers": s.answers, "length": length, "depth": depth}
        return Example(id=ex_id, question=s.fields["question"], answer=", ".join(s.answers), aliases=list(s.answers),
                       fields=fields, where=ex_id)

    def _n_tokens(self, tok, ex: Example) -> int:
        prompt = self.generation_prompt(tok, ex, [])
        return len(tok(prompt, add_special_tokens=not getattr(tok, "chat_template", None))["input_ids"])

    def build(self, tok, spec: LongContextSpec, n_per_length: int | None, seed: int, max_new_tokens: int,
              ) -> list[Example]:
        """Every example of the run: ``n_per_length`` samples at each of ``spec.lengths``, depths swept."""
        depths = spec.depths if self.family != "cwe" else (None,)
        n = n_per_length or DEFAULT_SAMPLES_PER_DEPTH * len(depths)
        hay = self._haystack(spec) if self.family == "niah" and self.haystack_source != "needles" else None
        out = []
        for length in spec.lengths:
            budget = length - max_new_tokens
            units = None
            for i in range(n):
                depth = depths[i % len(depths)]
                rseed = f"{self.name}:{seed}:{length}:{i}"

                def make(k: int, rseed=rseed, depth=depth, i=i, length=length) -> Example:
                    s = self._sample(random.Random(rseed), k, depth or 0.0, hay, hash_seed(rseed))
                    return self._example(s, f"{self.name}/L{length}/{i}", length, depth)

                units = _largest_fitting(lambda k: self._n_tokens(tok, make(k)), budget, self.name, length,
                                         self._max_units(), start=units)
                ex = make(units)
                ex.fields["n_units"] = units
                ex.fields["prompt_tokens"] = self._n_tokens(tok, ex)
                out.append(ex)
        return out

    def _max_units(self) -> int:
        if self.family == "cwe":
            return len(H.KEY_ADJECTIVES) * len(H.KEY_NOUNS) - 10
        return 10**7

    def generation_prompt(self, tok, ex: Example, shots: list[Example]) -> str:
        return apply_chat(tok, self.gen_messages(ex, shots)) + ex.fields["prefix"]

    # --------------------------------------------------------------- scoring
    def score_generation(self, ex: Example, text: str) -> GenScore:
        """RULER's score; the extracted answer (``pred``) is the gold strings the reply contains, ``", "``-joined in
        context order (``""`` when it contains none): two replies that recall the same needles give the same answer
        whatever else they say, so answer agreement compares what each model recalled (the reply itself is the
        record's ``generation``)."""
        refs = ex.fields["answers"]
        found = recalled(text, refs)  # string_match_all is len(found) / len(refs), string_match_part bool(found)
        return GenScore(", ".join(found), len(found) == len(refs), bool(text.strip()), "string_match_all",
                        score=len(found) / len(refs), extra={"match_part": float(bool(found))})


def hash_seed(s: str) -> int:
    return random.Random(s).randrange(2**31)


def _largest_fitting(n_tokens, budget: int, name: str, length: int, cap: int, start: int | None = None) -> int:
    """The largest haystack size (units, at most ``cap``) whose prompt fits ``budget`` tokens: a bracket grown from
    ``start`` (the previous sample's size, or 1) by factors of 2 (1.125 from a previous size), then bisection."""
    if n_tokens(1) > budget:
        raise ConfigError(f"task {name}: context length {length} leaves no room for a haystack after the prompt "
                          f"and the answer budget; choose a longer --context-lengths entry")
    step = 2.0 if start is None else 1.125
    lo = min(max(1, start or 1), cap)
    while lo > 1 and n_tokens(lo) > budget:
        lo = max(1, int(lo / step))
    hi = min(cap, max(lo + 1, int(lo * step)))
    while hi < cap and n_tokens(hi) <= budget:
        lo, hi = hi, min(cap, max(hi + 1, int(hi * step)))
    if hi >= cap and n_tokens(cap) <= budget:
        return cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_tokens(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


_PROMPT = "{intro}\n\n{context}\n\n{question}"


def ruler_tasks() -> dict[str, RulerTask]:
    common = dict(kind=SHORT_ANSWER, gen_prompt=_PROMPT, extraction="alias", group="ruler")
    niah = dict(family="niah", max_new_tokens=64, **common)
    multi = {**niah, "max_new_tokens": 128}
    tasks = [
        RulerTask(name="ruler_niah_single_1", haystack_source="noise", **niah,
                  doc="NIAH, one needle (word key, 7-digit number) in repeated filler sentences"),
        RulerTask(name="ruler_niah_single_2", haystack_source="essay", **niah,
                  doc="NIAH, one needle (word key, 7-digit number) in a seeded essay"),
        RulerTask(name="ruler_niah_single_3", haystack_source="essay", value_type="uuids", **niah,
                  doc="NIAH, one needle (word key, UUID value) in a seeded essay"),
        RulerTask(name="ruler_niah_single_4", haystack_source="essay", key_type="numbers", value_type="noun", **niah,
                  doc="NIAH, one needle (7-digit number key, word value) in a seeded essay"),
        RulerTask(name="ruler_niah_multikey_1", haystack_source="essay", n_keys=4, **niah,
                  doc="NIAH, 4 needles with different keys (3 distractors) in a seeded essay"),
        RulerTask(name="ruler_niah_multikey_2", haystack_source="needles", **niah,
                  doc="NIAH, the haystack is made of distractor needles (word keys, numbers)"),
        RulerTask(name="ruler_niah_multikey_3", haystack_source="needles", key_type="uuids", value_type="uuids",
                  **niah, doc="NIAH, the haystack is made of distractor needles (UUID keys and values)"),
        RulerTask(name="ruler_niah_multivalue", haystack_source="essay", n_values=4, **multi,
                  doc="NIAH, 4 values for the queried key, all to be retrieved"),
        RulerTask(name="ruler_niah_multiquery", haystack_source="essay", n_keys=4, n_queries=4, **multi,
                  doc="NIAH, 4 keys queried at once, all values to be retrieved"),
        RulerTask(name="ruler_vt", family="vt", n_values=4, max_new_tokens=48, **common,
                  doc="variable tracking: one chain of 5 variables (4 hops) in filler text"),
        RulerTask(name="ruler_cwe", family="cwe", max_new_tokens=120, breakdown=("length",), **common,
                  doc="common-word extraction: the 10 most frequent words of a numbered list"),
    ]
    return {t.name: t for t in tasks}
