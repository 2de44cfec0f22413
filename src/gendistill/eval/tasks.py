"""Benchmarks: the built-in registry, generic JSONL tasks and YAML task definitions.

A :class:`Task` turns an example into

* log-likelihood requests — one ``(context, continuation)`` pair per option, lm-evaluation-harness style
  (``"Question: {q}\\nAnswer:"`` + ``" {choice}"``; WinoGrande uses partial scoring, MMLU scores the letters), or a
  single gold continuation for short-answer tasks (scored as *greedy match*, like LAMBADA); ``None`` when the task has
  no log-likelihood form (GSM8K);
* chat messages for generation — options labelled ``A.``…, few-shot examples as earlier user/assistant turns;
* a scorer for the generated text (letter/option-text extraction, final number, or alias match).

Examples come from ``shared/data`` (``$GENDISTILL_DATA_DIR``) or, with ``source="hf"``, from the Hugging Face hub
datasets the files were derived from. Every record is validated when read; a bad one raises :class:`DataError` naming
the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gendistill.errors import ConfigError, DataError
from gendistill.eval import extract as X
from gendistill.io import data_dir, iter_jsonl
from gendistill.eval.prompts import apply_chat, format_options, letters_for, render

MULTIPLE_CHOICE = "multiple_choice"
SHORT_ANSWER = "short_answer"
MATH = "math"
KINDS = (MULTIPLE_CHOICE, SHORT_ANSWER, MATH)
EXTRACTIONS = ("letter", "text", "letter_or_text", "number", "alias")


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
    gen_prompt: str = "{question}\n\n{options}\n\nAnswer with the letter ({letters}) of the correct option."
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
                f"task {self.name}: benchmark folder not found (set GENDISTILL_DATA_DIR or place shared/data beside "
                f"the repository), needed for {name}"
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
        import datasets  # noqa: PLC0415

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


# ------------------------------------------------------------------------------------------------ built-in tasks


def _winogrande_loglik(task: Task, ex: Example, shots: list[Example]) -> list[tuple[str, str]]:
    """Partial scoring (lm-eval): each option substituted into the prefix, the shared continuation scored."""
    f = ex.fields
    opts = f.get("context_options")
    cont = f.get("continuation")
    if not (isinstance(opts, list) and isinstance(cont, str)):
        s = ex.question
        i = s.index("_") if "_" in s else len(s)
        opts = [s[:i] + c for c in ex.choices or []]
        cont = s[i + 1 :].strip()
    return [(o, " " + cont) for o in opts]


def _winogrande_pre(obj: dict) -> dict:
    if "choices" not in obj and "option1" in obj and "option2" in obj:
        obj = {**obj, "choices": [obj["option1"], obj["option2"]]}
    return obj


def _mmlu_fields(ex: Example) -> dict[str, Any]:
    subj = str(ex.fields.get("subject", "")).replace("_", " ")
    return {"subject": subj}


def _mmlu_fewshot(task: Task, ex: Example, pool: list[Example]) -> list[Example]:
    subj = ex.fields.get("subject")
    same = [p for p in pool if p.fields.get("subject") == subj and p.id != ex.id]
    return same[: task.n_fewshot]  # the dev split has exactly 5 per subject, used in file order (as lm-eval)


def _mmlu_loglik(task: Task, ex: Example, shots: list[Example]) -> list[tuple[str, str]]:
    subj = _mmlu_fields(ex)["subject"]
    ctx = f"The following are multiple choice questions (with answers) about {subj}.\n\n"
    for s in shots:
        ctx += f"{s.question.strip()}\n{format_options(s.choices)}\nAnswer: {X.LETTERS[s.answer_idx]}\n\n"
    ctx += f"{ex.question.strip()}\n{format_options(ex.choices)}\nAnswer:"
    return [(ctx, " " + X.LETTERS[i]) for i in range(len(ex.choices))]


def _gsm8k_fields(ex: Example) -> dict[str, Any]:
    sol = str(ex.fields.get("answer", ""))
    body = sol.split("####")[0].strip()
    body = re.sub(r"<<[^>]*>>", "", body)
    return {"solution": body}


def _hf_arc(row: dict, i: int) -> dict:
    labels = list(row["choices"]["label"])
    return {"id": row.get("id", str(i)), "question": row["question"], "choices": list(row["choices"]["text"]),
            "answer_idx": labels.index(row["answerKey"])}


def _hf_mmlu(row: dict, i: int) -> dict:
    return {"id": f"{row.get('subject', '')}/{i}", "subject": row.get("subject", ""), "question": row["question"],
            "choices": list(row["choices"]), "answer_idx": int(row["answer"])}


def _hf_hellaswag(row: dict, i: int) -> dict:
    query = f"{row['activity_label']}: {row['ctx']}"
    return {"id": str(row.get("ind", i)), "question": query, "query": query, "choices": list(row["endings"]),
            "answer_idx": int(row["label"])}


def _hf_piqa(row: dict, i: int) -> dict:
    return {"id": str(i), "question": row["goal"], "goal": row["goal"], "choices": [row["sol1"], row["sol2"]],
            "answer_idx": int(row["label"])}


def _hf_winogrande(row: dict, i: int) -> dict:
    s = row["sentence"]
    k = s.index("_")
    return {"id": str(i), "question": s, "sentence": s, "choices": [row["option1"], row["option2"]],
            "answer_idx": int(row["answer"]) - 1, "context_options": [s[:k] + row["option1"], s[:k] + row["option2"]],
            "continuation": s[k + 1 :].strip()}


def _hf_boolq(row: dict, i: int) -> dict:
    return {"id": str(i), "question": row["question"] + "?", "passage": row["passage"], "choices": ["no", "yes"],
            "answer_idx": int(bool(row["answer"]))}


def _hf_gsm8k(row: dict, i: int) -> dict:
    final = row["answer"].split("####")[-1].strip().replace(",", "")
    return {"id": str(i), "question": row["question"], "answer": row["answer"], "final_answer": final}


def _hf_triviaqa(row: dict, i: int) -> dict:
    a = row["answer"]
    return {"id": row.get("question_id", str(i)), "question": row["question"], "answer": a["value"],
            "aliases": list(a.get("aliases", []))}


_MC_GEN = "{question}\n\n{options}\n\nAnswer with the letter ({letters}) of the correct option."


def _builtin() -> dict[str, Task]:
    arc = dict(
        kind=MULTIPLE_CHOICE, hf_convert=_hf_arc, loglik_prompt="Question: {question}\nAnswer:",
        gen_prompt="Question: " + _MC_GEN, max_new_tokens=64,
    )
    tasks = [
        Task(name="arc_easy", data_file="arc_easy_test.jsonl.gz", hf=("allenai/ai2_arc", "ARC-Easy", "test"),
             doc="ARC-Easy test (2,376), 0-shot", **arc),
        Task(name="arc_challenge", data_file="arc_challenge_test.jsonl.gz",
             hf=("allenai/ai2_arc", "ARC-Challenge", "test"), doc="ARC-Challenge test (1,172), 0-shot", **arc),
        Task(name="mmlu", kind=MULTIPLE_CHOICE, data_file="mmlu_test.jsonl.gz", hf=("cais/mmlu", "all", "test"),
             hf_convert=_hf_mmlu, n_fewshot=5, fewshot_file="mmlu_dev.jsonl.gz", fewshot_select=_mmlu_fewshot,
             make_loglik=_mmlu_loglik, make_fields=_mmlu_fields,
             gen_prompt="The following is a multiple choice question about {subject}.\n\n" + _MC_GEN,
             fewshot_answer="Answer: {letter}", max_new_tokens=64,
             doc="MMLU test (57 subjects, 14,042), 5-shot from the subject's dev split"),
        Task(name="hellaswag", kind=MULTIPLE_CHOICE, data_file="hellaswag_validation.jsonl.gz",
             hf=("Rowan/hellaswag", None, "validation"), hf_convert=_hf_hellaswag,
             fields={"question": "query"}, loglik_prompt="{question}", loglik_choice=" {choice}",
             gen_prompt="Which ending is the most plausible continuation of the text?\n\n{question} ...\n\n{options}\n\n"
                        "Answer with the letter ({letters}) of the correct option.",
             max_new_tokens=64, doc="HellaSwag validation (10,042), 0-shot"),
        Task(name="piqa", kind=MULTIPLE_CHOICE, data_file="piqa_validation.jsonl.gz",
             hf=("ybisk/piqa", None, "validation"), hf_convert=_hf_piqa,
             loglik_prompt="Question: {question}\nAnswer:",
             gen_prompt="Goal: {question}\n\nWhich solution achieves the goal?\n\n{options}\n\n"
                        "Answer with the letter ({letters}) of the correct option.",
             max_new_tokens=64, doc="PIQA validation (1,838), 0-shot"),
        Task(name="winogrande", kind=MULTIPLE_CHOICE, data_file="winogrande_validation.jsonl.gz",
             hf=("allenai/winogrande", "winogrande_xl", "validation"), hf_convert=_hf_winogrande,
             fields={"question": "sentence"}, make_loglik=_winogrande_loglik, preprocess=_winogrande_pre,
             gen_prompt="Fill in the blank (_) in the sentence with the correct option.\n\nSentence: {question}\n\n"
                        "{options}\n\nAnswer with the letter ({letters}) of the correct option.",
             max_new_tokens=64, doc="WinoGrande xl validation (1,267), 0-shot, partial scoring under log-likelihood"),
        Task(name="boolq", kind=MULTIPLE_CHOICE, data_file="boolq_validation.jsonl.gz",
             hf=("google/boolq", None, "validation"), hf_convert=_hf_boolq,
             loglik_prompt="{passage}\nQuestion: {question}\nAnswer:", loglik_choice=" {choice}",
             gen_prompt="{passage}\n\nQuestion: {question}\n\nAnswer yes or no.", extraction="letter_or_text",
             max_new_tokens=16, doc="BoolQ validation (3,270), 0-shot; generation answers yes/no"),
        Task(name="gsm8k", kind=MATH, data_file="gsm8k_test.jsonl.gz", hf=("openai/gsm8k", "main", "test"),
             hf_convert=_hf_gsm8k, n_fewshot=4, fewshot_file="gsm8k_train.jsonl.gz", make_fields=_gsm8k_fields,
             gen_prompt="Solve the following math problem step by step. Put the final answer in \\boxed{{}}.\n\n"
                        "Question: {question}",
             fewshot_answer="{solution}\nThe answer is \\boxed{{{final_answer}}}.", extraction="number",
             max_new_tokens=256, doc="GSM8K test (1,319), 4-shot chain of thought (seeded pick from train), final "
                                     "number; generation only"),
        Task(name="triviaqa", kind=SHORT_ANSWER, data_file="triviaqa_validation_3k.jsonl.gz",
             hf=("mandarjoshi/trivia_qa", "rc.nocontext", "validation"), hf_convert=_hf_triviaqa,
             loglik_prompt="Question: {question}\nAnswer:",
             gen_prompt="Answer the following trivia question with just the answer, a few words at most.\n\n"
                        "Question: {question}",
             extraction="alias", max_new_tokens=32,
             doc="TriviaQA validation subset (3,000), 0-shot; generation: exact match against aliases; "
                 "log-likelihood: greedy match of the canonical answer"),
    ]
    return {t.name: t for t in tasks}


BUILTIN = _builtin()
GROUPS = ("all", "ruler", "code")  # 'all' = every standard benchmark (the shared/data ones)


def builtin_tasks() -> dict[str, Task]:
    """Every built-in task by name; the long-context and code tasks live in their own modules (they subclass
    :class:`Task` and import this one), so they are added on first use."""
    if "humaneval" not in BUILTIN:
        from gendistill.eval.humaneval import humaneval_tasks  # noqa: PLC0415
        from gendistill.eval.ruler import ruler_tasks  # noqa: PLC0415

        BUILTIN.update(ruler_tasks())
        BUILTIN.update(humaneval_tasks())
    return BUILTIN


def known_tasks() -> list[str]:
    return sorted(builtin_tasks())


def group_tasks(group: str) -> list[str]:
    want = "standard" if group == "all" else group
    return sorted(n for n, t in builtin_tasks().items() if t.group == want)


# ------------------------------------------------------------------------------------------------ files and YAML

_YAML_KEYS = {
    "name", "type", "data", "fields", "prompt", "loglik_prompt", "loglik_choice", "fewshot", "fewshot_answer",
    "max_new_tokens", "extraction", "system", "description",
}


def _sniff_kind(path: Path) -> str:
    for _, obj in iter_jsonl(path):
        return MULTIPLE_CHOICE if "choices" in obj else SHORT_ANSWER
    raise DataError(f"{path}: no examples")


def task_from_jsonl(path: str | Path, kind: str | None = None) -> Task:
    """A generic task over a JSONL file: multiple choice (``question``, ``choices``, ``answer_idx``) or short answer
    (``question``, ``answer``, optional ``aliases``), sniffed from the first record unless ``kind`` is given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    kind = kind or _sniff_kind(path)
    name = re.sub(r"\.jsonl(\.gz)?$", "", path.name)
    if kind == MULTIPLE_CHOICE:
        return Task(name=name, kind=kind, data_file=str(path.resolve()), gen_prompt="Question: " + _MC_GEN)
    return Task(
        name=name, kind=kind, data_file=str(path.resolve()), extraction="number" if kind == MATH else "alias",
        gen_prompt="Answer the following question with just the answer, a few words at most.\n\nQuestion: {question}",
        max_new_tokens=32 if kind == SHORT_ANSWER else 256,
    )


def task_from_yaml(path: str | Path) -> Task:
    """A task defined in YAML, so a new benchmark needs no code. Keys (unknown ones are an error)::

        name: my_quiz                      # required
        type: multiple_choice              # multiple_choice | short_answer | math
        data: quiz.jsonl                   # required; relative to this file
        fields: {question: q, choices: options, answer_idx: label}   # optional field renames
        prompt: "Question: {question}\\n{options}\\nAnswer with the letter."  # generation user turn
        loglik_prompt: "Question: {question}\\nAnswer:"      # log-likelihood context
        loglik_choice: " {choice}"                          # log-likelihood continuation per option
        fewshot: {source: dev.jsonl, n: 3, seed: 0}         # source defaults to `data` (example excluded)
        fewshot_answer: "Answer: {letter}"                  # assistant turn of each shot
        max_new_tokens: 32
        extraction: letter_or_text        # letter | text | letter_or_text | number | alias
        system: "You are a careful grader."                 # optional system prompt
        description: ""                                     # prefix of the log-likelihood context
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: task definition not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{loc}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of task keys")
    unknown = sorted(set(cfg) - _YAML_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_YAML_KEYS))})")
    for key in ("name", "data"):
        if key not in cfg:
            raise ConfigError(f"{path}: missing key '{key}'")
    kind = cfg.get("type", MULTIPLE_CHOICE)
    if kind not in KINDS:
        raise ConfigError(f"{path}: type '{kind}' is not one of {', '.join(KINDS)}")
    extraction = cfg.get("extraction", {MULTIPLE_CHOICE: "letter_or_text", SHORT_ANSWER: "alias", MATH: "number"}[kind])
    if extraction not in EXTRACTIONS:
        raise ConfigError(f"{path}: extraction '{extraction}' is not one of {', '.join(EXTRACTIONS)}")
    fields = cfg.get("fields") or {}
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise ConfigError(f"{path}: 'fields' must map our field names to the file's")
    mnt = cfg.get("max_new_tokens", 64 if kind == MULTIPLE_CHOICE else 256 if kind == MATH else 32)
    if not isinstance(mnt, int) or isinstance(mnt, bool) or mnt <= 0:
        raise ConfigError(f"{path}: max_new_tokens must be a positive integer, got {mnt!r}")
    fs = cfg.get("fewshot") or {}
    if isinstance(fs, int) and not isinstance(fs, bool):
        fs = {"n": fs}
    if not isinstance(fs, dict) or set(fs) - {"source", "n", "seed"}:
        raise ConfigError(f"{path}: 'fewshot' must be a number or a mapping with source, n, seed")
    n_shot = fs.get("n", 0)
    if not isinstance(n_shot, int) or n_shot < 0:
        raise ConfigError(f"{path}: fewshot.n must be a non-negative integer, got {n_shot!r}")
    default_prompt = "Question: " + _MC_GEN if kind == MULTIPLE_CHOICE else (
        "Answer the following question with just the answer, a few words at most.\n\nQuestion: {question}"
        if kind == SHORT_ANSWER else
        "Solve the following math problem step by step. Put the final answer in \\boxed{{}}.\n\nQuestion: {question}"
    )
    default_shot = {MULTIPLE_CHOICE: "Answer: {letter}", SHORT_ANSWER: "{answer}",
                    MATH: "The answer is \\boxed{{{final_answer}}}."}[kind]
    for key in ("prompt", "loglik_prompt", "loglik_choice", "fewshot_answer", "system", "description", "name"):
        if key in cfg and not isinstance(cfg[key], str):
            raise ConfigError(f"{path}: '{key}' must be a string")
    task = Task(
        name=cfg["name"], kind=kind, data_file=str(cfg["data"]), fields=fields, base_dir=path.resolve().parent,
        loglik_prompt=cfg.get("loglik_prompt", "Question: {question}\nAnswer:"),
        loglik_choice=cfg.get("loglik_choice", " {choice}"), gen_prompt=cfg.get("prompt", default_prompt),
        fewshot_answer=cfg.get("fewshot_answer", default_shot), system=cfg.get("system"),
        description=cfg.get("description", ""), n_fewshot=n_shot, fewshot_file=fs.get("source"),
        fewshot_seed=int(fs.get("seed", 1234)), max_new_tokens=mnt, extraction=extraction, doc=f"defined in {path}",
    )
    if not task.resolve(task.data_file).is_file():
        raise ConfigError(f"{path}: data file {task.resolve(task.data_file)} not found")
    if task.fewshot_file and not task.resolve(task.fewshot_file).is_file():
        raise ConfigError(f"{path}: fewshot source {task.resolve(task.fewshot_file)} not found")
    return task


def get_task(spec: str) -> Task:
    """A built-in name, a ``.yaml``/``.yml`` task definition, or a ``.jsonl``/``.jsonl.gz`` file (``mc:``/``qa:``/
    ``math:`` prefixes force the kind)."""
    spec = spec.strip()
    if spec in builtin_tasks():
        return dataclasses.replace(BUILTIN[spec], _pool=None)
    forced = None
    for prefix, kind in (("mc:", MULTIPLE_CHOICE), ("qa:", SHORT_ANSWER), ("math:", MATH)):
        if spec.startswith(prefix):
            forced, spec = kind, spec[len(prefix) :]
    if spec.endswith((".yaml", ".yml")):
        return task_from_yaml(spec)
    if spec.endswith((".jsonl", ".jsonl.gz")):
        return task_from_jsonl(spec, forced)
    raise ConfigError(
        f"unknown task '{spec}'; known tasks: {', '.join(known_tasks())}; groups: {', '.join(GROUPS)} "
        "(or a .jsonl/.jsonl.gz file, or a .yaml task definition)"
    )


def parse_tasks(spec: str) -> list[Task]:
    names = [s for s in (x.strip() for x in spec.split(",")) if s]
    if not names:
        raise ConfigError(f"no tasks given; known tasks: {', '.join(known_tasks())}")
    names = [m for n in names for m in (group_tasks(n) if n in GROUPS else [n])]
    return [get_task(n) for n in dict.fromkeys(names)]

