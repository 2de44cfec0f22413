"""What a benchmark is: the :class:`Task` class, its examples and their scores.

A :class:`Task` turns an example into

* log-likelihood requests — one ``(context, continuation)`` pair per option, lm-evaluation-harness style
  (``"Question: {q}\\nAnswer:"`` + ``" {choice}"``; WinoGrande uses partial scoring, MMLU scores the letters), or a
  single gold continuation for short-answer tasks (scored as *greedy match*, like LAMBADA); ``None`` when the task has
  no log-likelihood form (GSM8K);
* chat messages for generation — options labelled ``A.``…, few-shot examples as earlier user/assistant turns;
* a scorer for the generated text (letter/option-text extraction, final number, or alias match).

Examples come from ``shared/data`` (``$GENDISTILL_DATA_DIR``) or, with ``source="hf"``, from the Hugging Face hub
datasets the files were derived from. Every record is validated when read; a bad one raises :class:`DataError` naming
the file, the line and the field. The built-in tasks: :mod:`gendistill.eval.benchmarks` (the standard ones),
:mod:`gendistill.eval.ruler` (generated long-context ones), :mod:`gendistill.eval.humaneval` (code); the registry of
all of them: :mod:`gendistill.eval.tasks`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gendistill.errors import ConfigError, DataError
from gendistill.eval import extract as X
from gendistill.eval.prompts import apply_chat, format_options, letters_for, render
from gendistill.io import DATA_HINT, data_dir, iter_jsonl

MULTIPLE_CHOICE = "multiple_choice"
SHORT_ANSWER = "short_answer"
MATH = "math"
KINDS = (MULTIPLE_CHOICE, SHORT_ANSWER, MATH)
EXTRACTIONS = ("letter", "text", "letter_or_text", "number", "alias")
#: the generation prompt of a multiple-choice question (after a task's own prefix)
MC_GEN = "{question}\n\n{options}\n\nAnswer with the letter ({letters}) of the correct option."


@dataclass
class Example:
    id: str
    question: str
    choices: list[str] | None = None
    answer_idx: int | None = None
    answer: str | None = None  # gold text: final number (math) or canonical answer (short answer)
    aliases: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)  # the raw record, for templates and custom tasks
    where: str = ""  # "file:line"


@dataclass
class GenScore:
    pred: Any  # option index, number string or answer span; None when invalid
    correct: bool
    valid: bool
    method: str
    extra: dict[str, Any] = field(default_factory=dict)
    score: float | None = None  # a graded score in [0, 1] (RULER's share of gold strings found); None = correct

    @property
    def value(self) -> float:
        return float(self.correct) if self.score is None else self.score


# ------------------------------------------------------------------------------------------------ record validation


def _req(obj: dict, key: str, where: str, types: tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    v = obj[key]
    if not isinstance(v, types) or isinstance(v, bool) and bool not in types:
        raise DataError(f"{where}: field '{key}' must be {what}, got {type(v).__name__}")
    return v


def mc_example(obj: dict, where: str, fmap: dict[str, str] | None = None, idx_default: str | None = None) -> Example:
    """Validate a multiple-choice record (``question``, ``choices``, ``answer_idx``)."""
    f = {"question": "question", "choices": "choices", "answer_idx": "answer_idx", **(fmap or {})}
    q = _req(obj, f["question"], where, (str,), "a string")
    choices = _req(obj, f["choices"], where, (list,), "a list of strings")
    if len(choices) < 2:
        raise DataError(f"{where}: field '{f['choices']}' needs at least 2 options, got {len(choices)}")
    if len(choices) > len(X.LETTERS):  # options are labelled A-Z in prompts and answers
        raise DataError(f"{where}: field '{f['choices']}' has {len(choices)} options; at most {len(X.LETTERS)} (A-Z) "
                        "can be labelled")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise DataError(f"{where}: field '{f['choices']}' option {i} must be a string, got {type(c).__name__}")
    idx = _req(obj, f["answer_idx"], where, (int,), "an integer")
    if not 0 <= idx < len(choices):
        raise DataError(
            f"{where}: field '{f['answer_idx']}' = {idx} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
        )
    return Example(id=str(obj.get("id", where)), question=q, choices=list(choices), answer_idx=idx, fields=obj, where=where)


def qa_example(obj: dict, where: str, fmap: dict[str, str] | None = None) -> Example:
    """Validate a short-answer record (``question``, ``answer``, optional ``aliases``)."""
    f = {"question": "question", "answer": "answer", "aliases": "aliases", **(fmap or {})}
    q = _req(obj, f["question"], where, (str,), "a string")
    ans = _req(obj, f["answer"], where, (str, int, float), "a string or number")
    aliases = obj.get(f["aliases"], [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise DataError(f"{where}: field '{f['aliases']}' must be a list of strings")
    ans = str(ans)
    return Example(
        id=str(obj.get("id", where)), question=q, answer=ans, aliases=[ans, *[a for a in aliases if a != ans]],
        fields=obj, where=where,
    )


# ------------------------------------------------------------------------------------------------ the Task class


@dataclass
class Task:
    """A benchmark. Built-ins and YAML definitions are both instances; hooks override the defaults."""

    name: str
    kind: str
    data_file: str | None = None  # file name under shared/data, or an absolute/relative path
    hf: tuple[str, str | None, str] | None = None  # (dataset id, config, split) for source="hf"
    hf_convert: Callable[[dict, int], dict] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    loglik_prompt: str = "Question: {question}\nAnswer:"
    loglik_choice: str = " {choice}"
    gen_prompt: str = MC_GEN
    fewshot_answer: str = "Answer: {letter}"  # the assistant turn of a few-shot example (generation)
    system: str | None = None
    description: str = ""  # prefix of the log-likelihood prompt (MMLU's "The following are …")
    n_fewshot: int = 0
    fewshot_file: str | None = None  # pool; None = the task's own data (the example itself excluded)
    fewshot_seed: int = 1234
    max_new_tokens: int = 64
    extraction: str = "letter_or_text"
    doc: str = ""
    group: str = "standard"  # "all" on the command line means the standard group; "ruler", "code" name the others
    stop: tuple[str, ...] = ()  # generation stops at the first of these strings
    # Generated tasks (RULER-style) are built with the first model's tokenizer instead of loaded (``build``).
    generated: bool = False
    # Log-likelihood of the gold answer as the continuation of the exact generation prompt (long-context tasks).
    loglik_on_generation_prompt: bool = False
    breakdown: tuple[str, ...] = ()  # example fields the report breaks accuracy down by ("length", "depth")
    extra_rates: tuple[str, ...] = ()  # boolean/float GenScore.extra keys averaged into the generation row
    # hooks
    make_loglik: Callable[["Task", Example, list[Example]], list[tuple[str, str]] | None] | None = None
    make_fields: Callable[[Example], dict[str, Any]] | None = None
    fewshot_select: Callable[["Task", Example, list[Example]], list[Example]] | None = None
    preprocess: Callable[[dict], dict] | None = None  # applied to each raw record before validation
    base_dir: Path | None = None  # YAML tasks: paths are relative to the YAML file
    _pool: list[Example] | None = field(default=None, repr=False)

    # --------------------------------------------------------------- data
    def resolve(self, name: str) -> Path:
        p = Path(name)
        if p.is_absolute():
            return p
        if self.base_dir is not None:
            return self.base_dir / p
        d = data_dir()
        if d is None:
            raise DataError(
                f"task {self.name}: benchmark folder not found ({DATA_HINT}), needed for {name}"
            )
        return d / p

    def _parse(self, path: Path) -> list[Example]:
        out = []
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            if self.preprocess is not None:
                obj = self.preprocess(obj)
            if self.kind == MULTIPLE_CHOICE:
                out.append(mc_example(obj, where, self.fields))
            else:
                ex = qa_example(obj, where, self.fields)
                if self.kind == MATH:
                    ex.answer = X.normalize_number(str(obj.get("final_answer", ex.answer))) or ex.answer
                    if "final_answer" not in obj and "####" in str(obj.get("answer", "")):
                        ex.answer = X.normalize_number(str(obj["answer"]).split("####")[-1]) or ex.answer
                out.append(ex)
        if not out:
            raise DataError(f"{path}: no examples")
        return out

    def load(self, source: str = "local") -> list[Example]:
        """All examples of the evaluation split."""
        if source == "hf":
            return self._load_hf()
        if not self.data_file:
            raise ConfigError(f"task {self.name}: no data file")
        return self._parse(self.resolve(self.data_file))

    def _load_hf(self) -> list[Example]:
        if self.hf is None:
            raise ConfigError(f"task {self.name}: no Hugging Face dataset id known; use the local files")
        import datasets  # noqa: PLC0415  (heavy: only --data-source hf)

        ds_id, cfg, split = self.hf
        try:
            ds = datasets.load_dataset(ds_id, cfg, split=split)
        except Exception as exc:  # noqa: BLE001 - network/hub errors become one line
            raise DataError(f"task {self.name}: cannot load {ds_id} ({cfg}, {split}) from the hub: {exc}") from None
        out = []
        for i, row in enumerate(ds):
            obj = self.hf_convert(dict(row), i) if self.hf_convert else dict(row)
            where = f"hf:{ds_id}/{split}:{i}"
            out.append(mc_example(obj, where) if self.kind == MULTIPLE_CHOICE else qa_example(obj, where))
            if self.kind == MATH:
                out[-1].answer = X.normalize_number(str(obj.get("final_answer", ""))) or out[-1].answer
        return out

    def fewshot_pool(self) -> list[Example]:
        if self._pool is None:
            if self.n_fewshot <= 0:
                self._pool = []
            else:
                self._pool = self._parse(self.resolve(self.fewshot_file)) if self.fewshot_file else []
        return self._pool

    def fewshot_for(self, ex: Example, all_examples: list[Example]) -> list[Example]:
        if self.n_fewshot <= 0:
            return []
        pool = self.fewshot_pool() or all_examples
        if self.fewshot_select is not None:
            return self.fewshot_select(self, ex, pool)
        cands = [p for p in pool if p.id != ex.id]
        rng = random.Random(self.fewshot_seed)
        return rng.sample(cands, min(self.n_fewshot, len(cands)))

    # --------------------------------------------------------------- formatting
    def template_fields(self, ex: Example) -> dict[str, Any]:
        f: dict[str, Any] = dict(ex.fields)
        f.update(question=ex.question, id=ex.id)
        if ex.choices is not None:
            f.update(options=format_options(ex.choices), letters=letters_for(len(ex.choices)))
            if ex.answer_idx is not None:
                f.update(letter=X.LETTERS[ex.answer_idx], answer_text=ex.choices[ex.answer_idx])
        if ex.answer is not None:
            f.setdefault("answer", ex.answer)
            f["final_answer"] = ex.answer
        if self.make_fields is not None:
            f.update(self.make_fields(ex))
        return f

    def _render(self, template: str, ex: Example, what: str) -> str:
        try:
            return render(template, self.template_fields(ex))
        except KeyError as exc:
            raise ConfigError(f"task {self.name}: {what} uses {{{exc.args[0]}}}, which {ex.where} does not have") from None

    def loglik_requests(self, ex: Example, shots: list[Example]) -> list[tuple[str, str]] | None:
        """``(context, continuation)`` per option (MC) or one gold pair (short answer); None if not applicable."""
        if self.make_loglik is not None:
            return self.make_loglik(self, ex, shots)
        if self.kind == MATH:
            return None
        prefix = self.description
        for s in shots:
            prefix += self._render(self.loglik_prompt, s, "loglik_prompt") + self._gold_continuation(s) + "\n\n"
        ctx = prefix + self._render(self.loglik_prompt, ex, "loglik_prompt")
        if self.kind == MULTIPLE_CHOICE:
            fields = self.template_fields(ex)
            return [
                (ctx, render(self.loglik_choice, {**fields, "choice": c, "letter": X.LETTERS[i]}))
                for i, c in enumerate(ex.choices or [])
            ]
        return [(ctx, " " + ex.answer)]

    def _gold_continuation(self, ex: Example) -> str:
        if self.kind == MULTIPLE_CHOICE:
            f = self.template_fields(ex)
            return render(self.loglik_choice, {**f, "choice": ex.choices[ex.answer_idx]})
        return " " + str(ex.answer)

    def generation_prompt(self, tok, ex: Example, shots: list[Example]) -> str:
        """The chat-templated prompt the model continues (tasks that pre-fill the reply override this)."""
        return apply_chat(tok, self.gen_messages(ex, shots))

    def gen_messages(self, ex: Example, shots: list[Example]) -> list[dict[str, str]]:
        msgs: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        for s in shots:
            msgs.append({"role": "user", "content": self._render(self.gen_prompt, s, "prompt")})
            msgs.append({"role": "assistant", "content": self._render(self.fewshot_answer, s, "fewshot_answer")})
        msgs.append({"role": "user", "content": self._render(self.gen_prompt, ex, "prompt")})
        return msgs

    # --------------------------------------------------------------- scoring
    def score_generation(self, ex: Example, text: str) -> GenScore:
        if self.kind == MULTIPLE_CHOICE:
            allow_text = self.extraction in ("text", "letter_or_text")
            if self.extraction == "text":
                idx = X._match_option_text(X.strip_reasoning(text), ex.choices or [])
                c = X.Choice(idx, "text" if idx is not None else "none")
            else:
                c = X.extract_choice(text, ex.choices or [], allow_text=allow_text)
            return GenScore(c.index, c.index is not None and c.index == ex.answer_idx, c.index is not None, c.method)
        if self.kind == MATH or self.extraction == "number":
            n = X.extract_number(text)
            return GenScore(n.value, X.numbers_equal(n.value, ex.answer), n.value is not None, n.method)
        exact, contains = X.match_aliases(text, ex.aliases or [ex.answer or ""])
        span = X.extract_short_answer(text)
        return GenScore(span, exact, span is not None, "alias", {"contains": contains})

    def score_generations(self, examples: list[Example], texts: list[str]) -> list[GenScore]:
        """Score a whole batch (tasks that execute code run the batch in parallel)."""
        return [self.score_generation(ex, t) for ex, t in zip(examples, texts)]

    def row_metrics(self, examples: list[Example], scores: list[list[GenScore]]) -> dict[str, Any]:
        """Task-specific metrics for the generation row (``scores[i]`` = one GenScore per sampling seed)."""
        return {}


def select(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A deterministic subsample: the same ``(limit, seed)`` always gives the same examples, in file order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit <= 0:
        raise ConfigError(f"--limit must be positive, got {limit}")
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
